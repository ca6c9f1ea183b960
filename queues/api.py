"""The queues app's front door: what another app imports to declare job types, enqueue jobs, and
tell their outcomes apart. Everything else in `queues` is its own business.

Named like `django.contrib.messages.api`: the app's Python API (its REST API is `views.py`).

Declare a job type in your app's `jobs.py` (found at startup, like `admin.py`), with its queue and
options beside the handler, the way Oban workers and River's `JobArgs` do::

    from queues.api import JobData, RetryPolicy, job_type

    class SendReceiptData(JobData):  # JobData carries `user_id` and `request_id`
        id = serializers.IntegerField(min_value=1)

    @job_type("send_receipt", queue="database", schema=SendReceiptData,
              retry=RetryPolicy(attempts=5), subject=lambda data, result: f"order:{data['id']}")
    def send_receipt(data, job):  # or (data), or (job): see `queues.execution.handlers`
        ...

then enqueue it by name, in the transaction of the change that asks for it (the queue comes from
the type)::

    enqueue("send_receipt", {"id": 7, "user_id": user.pk}, request_id=request.request_id)

Errors: at enqueue, `JobValidationError` (unknown type, data that does not fit; nothing stored).
Raised by a handler: any exception is retried with backoff while attempts are left, except
`PermanentJobError`, which fails the job at once, `SubjectGone` too (and erases its content
fields), and what the type's `RetryPolicy(dont_autoretry_for=...)` names. `Snooze(seconds)` (or
`job.snooze(seconds)`) runs the job again later without spending an attempt;
`job.report_progress(percent, message)` shows how far a handler got, while it runs.
A long handler calls `raise_if_stop_requested()` where stopping is safe (an `async def` one
awaits `araise_if_stop_requested()`): an operator's stop request then raises `JobCancelled`,
its transaction rolls back, and the job ends cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from queues.core import periodic, registry, selectors, services
from queues.core.registry import RetryPolicy, Unique
from queues.core.schemas import JobData, UserlessJobData
from queues.engine.statements import hot_cursor
from queues.errors import (
    JobCancelled,
    JobError,
    JobTimeout,
    JobValidationError,
    PermanentJobError,
    Snooze,
    SubjectGone,
    TooManyLiveJobs,
    TransientJobError,
    WorkerLost,
)
from queues.execution.cancellation import araise_if_stop_requested, raise_if_stop_requested
from queues.execution.handlers import RunningJob
from queues.models import Job

__all__ = [
    "Job",
    "JobCancelled",
    "JobData",
    "JobError",
    "JobTimeout",
    "JobValidationError",
    "PermanentJobError",
    "RetryPolicy",
    "RunningJob",
    "Snooze",
    "SubjectGone",
    "TooManyLiveJobs",
    "TransientJobError",
    "Unique",
    "UserlessJobData",
    "WorkerLost",
    "araise_if_stop_requested",
    "cancel_waiting_jobs",
    "enqueue",
    "enqueue_if",
    "enqueue_many",
    "forget_subject",
    "job_type",
    "keeps_content_about",
    "keeps_content_about_sql",
    "prepared_cursor",
    "raise_if_stop_requested",
    "subjects_with_failed_jobs",
    "subjects_with_live_jobs",
    "types_with_content",
]


def job_type(
    name: str,
    *,
    queue: str,
    schema: type[JobData],
    every: timedelta | None = None,
    cron: str | None = None,
    **options: Any,
) -> Callable[[registry.Handler], registry.Handler]:
    """Decorator declaring its function as the handler of job type `name` on `queue`.

    `schema`: a `JobData` serializer for the job's data. Options (`queues.core.registry.register`
    takes each, and `JobType` stores it): `retry` (a `RetryPolicy`; `settings.JOB_RETRY_POLICIES`
    may override it), `subject` (`(data, result) -> "kind:id"`, what the job is about, so it can
    be found and erased), `content_fields` (data fields holding user content: shown to the job's
    owner only, erased with its subject), `output_is_content` (the handler's return value and
    error text may hold user content: shown and erased like those fields), `client_enqueueable`
    (`POST /api/queues/jobs` takes it), `priority` (0, claimed first, to 9), `unique` (a
    `Unique`: at most one job per value of some data fields among jobs in some states, or per
    period), `timeout` (seconds an attempt may run, at most the queue's, which is the default)
    and `delay` (seconds from enqueue to the first run). `enqueue` may override `priority`,
    `delay`, `timeout`, the policy's `attempts` (`max_attempts`) and `backoff_seconds` per job.

    `every` (a timedelta of whole minutes) or `cron` (five fields, in `TIME_ZONE`) makes the type
    periodic: a job of it, with empty data, is enqueued for each time slot, once whatever the
    number of clusters (`queues.core.periodic`; its schedule is synced by `migrate`).
    """
    register = registry.register(name, queue=queue, schema=schema, **options)
    if every is None and cron is None:
        return register

    declaration = periodic.Periodic(name, name, every=every, cron=cron)  # ValueError if bad
    _check_empty_data(name, schema)

    def periodic_type(handler: registry.Handler) -> registry.Handler:
        handler = register(handler)
        periodic.declare(declaration)
        return handler

    return periodic_type


def _check_empty_data(name: str, schema: type[JobData]) -> None:
    """A periodic type is enqueued with no data: its schema must take that."""
    serializer = schema(data={"request_id": "periodic"}, context={"user_checked": True})
    if not serializer.is_valid():
        raise ValueError(f"periodic job type {name!r} must take empty data: {serializer.errors}")


# The one verb: `enqueue(job_type, data, ...)`; `enqueue_if(update, values, job_type, data, ...)`
# stores it only if a change happens, atomically; `enqueue_many(job_type, items, ...)`.
enqueue = services.enqueue
enqueue_if = services.enqueue_if
enqueue_many = services.enqueue_many


cancel_waiting_jobs = services.cancel_waiting_jobs
forget_subject = services.forget_subject
subjects_with_live_jobs = selectors.subjects_with_live_jobs
keeps_content_about = selectors.keeps_content_about
keeps_content_about_sql = selectors.keeps_content_about_sql
subjects_with_failed_jobs = selectors.subjects_with_failed_jobs
types_with_content = registry.types_with_content

# A cursor for a statement a handler sends on every run, whose text is constant: on PostgreSQL its
# parameters go apart and it is planned once per connection, as the queue's own per-job statements.
prepared_cursor = hot_cursor
