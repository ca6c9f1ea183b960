"""Cancelling jobs: a waiting job is withdrawn at once, a running one is asked to stop.

- `queued`/`retrying`: `cancelled` now, in one transaction with its history event and counters,
  and its content fields erased (it will never run). Its broker row may stay; the runner skips a
  delivery of a finished job.
- `running`: the request is recorded (`Job.cancel_requested_at`, `_by`). The worker cannot stop a
  handler from outside without leaving its work half done, so handlers check cooperatively:

      from queues.execution.cancellation import raise_if_stop_requested

      def handler(data):
          for chunk in chunks:
              raise_if_stop_requested()  # raises JobCancelled once a stop was asked
              ...

  (an `async def` handler awaits `araise_if_stop_requested()`.)
  `JobCancelled` rolls the handler's transaction back whole and the runner records the job
  `cancelled`. A handler that never checks, or has passed its last check, finishes normally. A
  request stands until the job finishes: should the attempt fail and be retried automatically,
  the next attempt's first check stops it. An operator's retry of a failed job
  (`services.retry_jobs`) starts afresh: it clears the request.
- finished: nothing to cancel.
"""

import asyncio
from contextlib import contextmanager
from contextvars import ContextVar

from asgiref.sync import sync_to_async
from django.db import transaction
from django.utils import timezone

from queues.core import history, registry
from queues.core.services import drop_content
from queues.engine import counters
from queues.errors import JobCancelled
from queues.models import Job, JobEvent

# The job whose handler runs in this worker process (set by the runner around the handler).
_running = ContextVar("queues_running_job", default=None)


@transaction.atomic
def cancel_jobs(jobs, *, by=None, stop_running=True, detail=""):
    """Cancel the waiting jobs of `jobs` and ask the running ones to stop (unless not
    `stop_running`). Returns (how many were cancelled, how many were asked to stop); finished
    jobs are left alone. `detail` goes into each job's history."""
    now = timezone.now()
    live = list(
        Job.objects.select_for_update()
        .filter(pk__in=jobs.values("pk"), status__in=Job.LIVE)
        .order_by("pk")
        .only("pk", "queue", "job_type", "status", "cancel_requested_at")
    )
    waiting = [job for job in live if job.status in Job.WAITING]
    running = [
        job
        for job in live
        if stop_running and job.status == Job.Status.RUNNING and not job.cancel_requested_at
    ]
    Job.objects.filter(pk__in=[job.pk for job in waiting]).update(
        status=Job.Status.CANCELLED,
        finished_at=now,
        cancel_requested_by=by,
        cancel_requested_at=now,
    )
    for queue, job_type in {(job.queue, job.job_type) for job in waiting}:
        count = sum(1 for job in waiting if (job.queue, job.job_type) == (queue, job_type))
        counters.jobs_cancelled(queue, job_type, count)
    history.record(waiting, JobEvent.Action.CANCELLED, by=by, detail=detail)
    # Never to run: nothing will use their content (a title, a message), so it goes now.
    with_content = registry.types_with_content()
    drop_content(Job.objects.filter(pk__in=[j.pk for j in waiting if j.job_type in with_content]))
    Job.objects.filter(pk__in=[job.pk for job in running]).update(
        cancel_requested_by=by, cancel_requested_at=now
    )
    history.record(running, JobEvent.Action.CANCEL_REQUESTED, by=by, detail=detail)
    return len(waiting), len(running)


def stop_requested(job_id):
    """Whether someone asked the job `job_id` to stop (read fresh from the database)."""
    return Job.objects.filter(pk=job_id, cancel_requested_at__isnull=False).exists()


def raise_if_stop_requested():
    """For handlers: raise `JobCancelled` if a stop of the running job was requested.

    One indexed lookup; does nothing outside a job (a handler called directly, e.g. in a test).
    """
    job_id = _running.get()
    if job_id is not None and _in_event_loop():
        raise TypeError("an async handler awaits araise_if_stop_requested() instead")
    if job_id is not None and stop_requested(job_id):
        raise JobCancelled("stopped at the request of an operator")


def _in_event_loop():
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def araise_if_stop_requested():
    """`raise_if_stop_requested` for `async def` handlers: its query runs on the worker's
    connection (`queues.execution.coroutines`)."""
    await sync_to_async(raise_if_stop_requested)()


@contextmanager
def checking(job):
    """The runner runs `job`'s handler inside this, so its checks know which job they are for."""
    token = _running.set(job.pk)
    try:
        yield
    finally:
        _running.reset(token)
