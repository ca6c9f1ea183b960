"""How the runner calls a job type's handler: with the job's data, the job, or both.

A handler's parameters say what it wants, checked once when its type is declared:

- `def handler(data)`: the job's data (a copy), as validated at enqueue time;
- `def handler(data, job)`: the data and the running job (`RunningJob`);
- `def handler(job)`: the running job alone (its data is `job.data`).

`job` is recognised by its name; the data parameter may have any name. The running job is a
read-only snapshot: the runner alone writes the job's record (its outcome is fenced by attempt).

A handler may be `async def`: the worker awaits it (`queues.execution.coroutines`, which says how
its queries join the attempt's transaction). An async generator is refused when declared.

The handler may ask two things of it: `job.report_progress(percent, message)` (written to the
record at once, `queues.execution.progress`) and `job.snooze(seconds)` (run again later, no
attempt spent: it raises `Snooze`).
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache

from asgiref.sync import sync_to_async

from queues.errors import Snooze
from queues.execution import coroutines


@dataclass(frozen=True)
class RunningJob:
    """What a handler may know about the job it runs (River's `Job`, Oban's `%Job{}`)."""

    id: object  # uuid.UUID
    queue: str
    type: str
    data: dict
    attempt: int  # 1 on the first run; counts every attempt, an operator's retry's too
    max_attempts: int
    request_id: str
    user_id: int | None
    subject: str
    created_at: datetime | None
    retried_at: datetime | None  # when an operator last sent it back after it failed, or None
    timeout: float | None = None  # seconds this attempt may run
    # `queues.execution.progress.reporter` of the attempt (None: a snapshot outside a worker).
    reporter: Callable[..., bool] | None = field(default=None, repr=False, compare=False)

    def report_progress(self, percent: float | None = None, message: str | None = None) -> bool:
        """Record how far the handler got, at once: `percent` (0-100) and/or a short `message`
        (at most 200 characters, shown like the job's result). Whether it was written."""
        if self.reporter is None:
            raise RuntimeError("progress is reported by a handler that a worker runs")
        return self.reporter(percent, message)

    async def areport_progress(
        self, percent: float | None = None, message: str | None = None
    ) -> bool:
        """`report_progress` for an `async def` handler: run on the worker's thread and
        connection, as Django's async ORM calls are (`queues.execution.coroutines`)."""
        return await sync_to_async(self.report_progress)(percent, message)

    def snooze(self, seconds: float | timedelta) -> None:
        """Stop here and run this job again `seconds` from now, without spending an attempt
        (raises `Snooze`: the attempt's work rolls back)."""
        raise Snooze(seconds)

    @classmethod
    def of(cls, job, *, timeout=None, reporter=None):
        """The snapshot of a `queues.models.Job` whose attempt has begun."""
        return cls(
            id=job.id,
            queue=job.queue,
            type=job.job_type,
            data=dict(job.data),
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            request_id=job.request_id,
            user_id=job.user_id,
            subject=job.subject,
            created_at=job.created_at,
            retried_at=job.retried_at,
            timeout=timeout,
            reporter=reporter,
        )


@cache
def wants(handler):
    """(whether `handler` takes the data, whether it takes the job); TypeError if it fits neither
    `handler(data)`, `handler(data, job)` nor `handler(job)`."""
    if inspect.isasyncgenfunction(handler) or inspect.isgeneratorfunction(handler):
        raise TypeError(
            f"job handler {handler.__qualname__} is a generator: a job has one result, so a "
            "handler returns it (`async def` handlers are awaited), it does not yield"
        )
    parameters = inspect.signature(handler).parameters
    takes_job = "job" in parameters
    takes_data = any(name != "job" for name in parameters)
    args, kwargs = (("data",) if takes_data else ()), ({"job": "job"} if takes_job else {})
    try:
        inspect.signature(handler).bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"job handler {handler.__qualname__} must take (data), (data, job) or (job): {exc}"
        ) from None
    if not takes_data and not takes_job:
        raise TypeError(f"job handler {handler.__qualname__} takes neither data nor job")
    return takes_data, takes_job


def call(handler, job, *, timeout=None, reporter=None):
    """Run `handler` for `job` (a `queues.models.Job`), giving it what its parameters ask for;
    `timeout` and `reporter` go to its `RunningJob`."""
    takes_data, takes_job = wants(handler)
    args = (dict(job.data),) if takes_data else ()
    running = RunningJob.of(job, timeout=timeout, reporter=reporter) if takes_job else None
    result = handler(*args, **({"job": running} if takes_job else {}))
    if inspect.isawaitable(result):  # an `async def` handler (or one returning a coroutine)
        result = coroutines.run(result)
    return result
