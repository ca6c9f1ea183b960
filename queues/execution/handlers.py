"""How the runner calls a job type's handler: with the job's data, the job, or both.

A handler's parameters say what it wants, checked once when its type is declared:

- `def handler(data)`: the job's data (a copy), as validated at enqueue time;
- `def handler(data, job)`: the data and the running job (`RunningJob`);
- `def handler(job)`: the running job alone (its data is `job.data`).

`job` is recognised by its name; the data parameter may have any name. The running job is a
read-only snapshot: the runner alone writes the job's record (its outcome is fenced by attempt).

A handler may be `async def`: the worker awaits it (`queues.execution.coroutines`, which says how
its queries join the attempt's transaction). An async generator is refused when declared.
"""

import inspect
from dataclasses import dataclass
from datetime import datetime
from functools import cache

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

    @classmethod
    def of(cls, job):
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


def call(handler, job):
    """Run `handler` for `job` (a `queues.models.Job`), giving it what its parameters ask for."""
    takes_data, takes_job = wants(handler)
    args = (dict(job.data),) if takes_data else ()
    result = handler(*args, **({"job": RunningJob.of(job)} if takes_job else {}))
    if inspect.isawaitable(result):  # an `async def` handler (or one returning a coroutine)
        result = coroutines.run(result)
    return result
