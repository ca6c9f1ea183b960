"""What a `qcluster` worker runs for every broker row: one attempt of one job.

An attempt is three short steps, so a crash at any point leaves the job in a state the next
delivery understands:

1. begin (own commit): count the attempt and mark the job running. A worker killed later still
   used this attempt, so a job that kills its worker every time ends `failed` instead of being
   redelivered forever. On PostgreSQL this commit does not wait for the disk (see begin_attempt).
2. work: the handler runs in one transaction that also holds the job row's lock, marks the job
   succeeded and deletes its broker row, so the work, its success and its acknowledgement commit
   together or not at all. The lock tells a later delivery whether the attempt is still alive: a
   `running` job whose row is not locked lost its worker.
3. on failure (own commit, also acknowledging): retry after a backoff, or fail for good.

The runner never lets a job's own failure escape to django-q2: our job record holds the outcome,
and the broker row is acknowledged. Only trouble recording the outcome (the database is down)
escapes, leaving the row to be delivered again.
"""

import logging
import os
import signal
import socket
import traceback
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from queues import counters, registry
from queues.broker import acknowledge_delivery, push
from queues.errors import (
    JobTimeout,
    PermanentJobError,
    SubjectGone,
    TransientJobError,
    WorkerLost,
    is_transient,
)
from queues.models import Job
from slimy import log_context

logger = logging.getLogger("queues.runner")

# A broker row may be handed out this early (clock skew between hosts, rounding).
EARLY_TOLERANCE = timedelta(seconds=1)


def run_job(job_id):
    """Run one attempt of job `job_id` (django-q2 task entry point)."""
    ensure_database()
    job = begin_attempt(job_id)
    if job is None:
        return None
    with log_context.bind(**log_fields(job)):
        logger.info("job attempt %s/%s started", job.attempts, job.max_attempts)
        try:
            return work(job)
        except Exception as exc:  # every failure is recorded, then retried or failed
            if isinstance(exc, JobTimeout):
                discard_connection_if_busy()
            record_failure(job, exc)
            return None


def discard_connection_if_busy():
    """After a timeout the alarm may have interrupted a query that still runs on the connection."""
    in_use = connection.connection is not None and not connection.in_atomic_block
    if in_use and not connection.is_usable():
        connection.close()


def log_fields(job):
    """Ids only, never content: job, queue, type, attempt, request and the data's `*_id`s."""
    ids = {k: v for k, v in job.data.items() if k.endswith("_id") and k != "request_id"}
    return {
        "job_id": str(job.id),
        "queue": job.queue,
        "job_type": job.job_type,
        "attempt": job.attempts,
        "request_id": job.request_id,
        **ids,
    }


def ensure_database():
    """Fail with a clear, retryable error when the database is missing or unreachable."""
    if not settings.DATABASES.get("default", {}).get("NAME"):
        raise TransientJobError("database not configured")
    try:
        connection.ensure_connection()
    except Exception as exc:
        raise TransientJobError(f"database unreachable: {exc.__class__.__name__}") from exc


def begin_attempt(job_id):
    """Count a new attempt and mark the job running; None when this delivery has nothing to do."""
    now = timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Visible to other sessions at once, durable with the next synchronous commit (the
            # work's): WAL is flushed in order, so only a database crash that also loses the
            # work can lose this count. A worker crash cannot. Saves one disk flush per job.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        job = Job.objects.select_for_update(skip_locked=True).filter(pk=job_id).first()
        if job is None:
            busy = Job.objects.filter(pk=job_id).first()
            if busy is not None:
                # Another attempt holds the row right now. Look again later, so the job is not
                # lost if that attempt dies.
                busy.run_after = now + timedelta(seconds=settings.QUEUES[busy.queue]["timeout"])
                push(busy)
            return None
        if job.is_finished:
            return None
        if job.status in Job.WAITING and job.run_after > now + EARLY_TOLERANCE:
            return None  # a stale copy; the job's own broker row comes later
        if job.status == Job.Status.RUNNING:
            # Running but unlocked: the worker of the last attempt died mid-job.
            lost = WorkerLost(f"worker {job.worker or '?'} died during attempt {job.attempts}")
            job.last_error, job.last_error_class = str(lost), WorkerLost.__name__
            final = job.attempts >= job.max_attempts
            counters.worker_lost(job, final=final)
            if final:
                job.status, job.finished_at = Job.Status.FAILED, now
                job.save()
                with log_context.bind(**log_fields(job)):
                    logger.error("job failed for good: %s", lost)
                return None
        else:
            counters.attempt_started(job, first=job.attempts == 0)
        job.status = Job.Status.RUNNING
        job.attempts += 1
        job.started_at = now
        job.worker = f"{socket.gethostname()}:{os.getpid()}"
        # Only what changed: no need to serialize and rewrite the job's data on every attempt.
        job.save(
            update_fields=[
                "status",
                "attempts",
                "started_at",
                "worker",
                "last_error",
                "last_error_class",
            ]
        )
    return job


def lock_attempt(job):
    """The job's row, locked, while it is still in the attempt `job` began; else None."""
    return (
        Job.objects.select_for_update()
        .filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts)
        .first()
    )


def work(job):
    """Run the handler and mark success, in one transaction holding the job row."""
    kind = registry.find(job.job_type)
    if kind is None:
        raise PermanentJobError(f"unknown job type {job.job_type!r}")
    with transaction.atomic():
        current = lock_attempt(job)
        if current is None:
            return None  # another delivery took this attempt over
        with handler_timeout(settings.QUEUES[job.queue]["timeout"]):
            result = kind.handler(dict(job.data))
        current.status = Job.Status.SUCCEEDED
        current.result = result
        current.finished_at = timezone.now()
        current.subject = kind.subject_of(job.data, result) or current.subject
        current.save(update_fields=["status", "result", "finished_at", "subject"])
        counters.attempt_succeeded(
            current, (current.finished_at - current.started_at).total_seconds()
        )
        acknowledge_delivery()
    logger.info("job succeeded")
    return result


def record_failure(job, exc):
    """Schedule a retry for a transient failure with attempts left; otherwise fail the job."""
    kind = registry.find(job.job_type)
    retry = is_transient(exc) and job.attempts < job.max_attempts
    with transaction.atomic():
        current = lock_attempt(job)
        if current is None:
            return
        now = timezone.now()
        current.last_error = str(exc) or exc.__class__.__name__
        current.last_error_class = exc.__class__.__name__
        current.traceback = "".join(traceback.format_exception(exc))
        if retry:
            delay = kind.retry_policy.delay_after(job.attempts)
            current.status = Job.Status.RETRYING
            current.run_after = now + timedelta(seconds=delay)
        else:
            current.status = Job.Status.FAILED
            current.finished_at = now
            if isinstance(exc, SubjectGone):  # nothing will ever use its content
                current.data = kind.without_content(current.data)
        current.save()
        counters.attempt_failed(current, (now - current.started_at).total_seconds(), retry=retry)
        acknowledge_delivery()
        if retry:
            push(current)
    if retry:
        logger.error(
            "job attempt failed, retrying in %.1fs: %s: %s",
            delay,
            exc.__class__.__name__,
            exc,
            exc_info=exc,
        )
    else:
        logger.error("job failed for good: %s: %s", exc.__class__.__name__, exc, exc_info=exc)


@contextmanager
def handler_timeout(seconds):
    """Raise JobTimeout in the handler after `seconds` (main thread of a worker process only)."""

    def expire(signum, frame):
        raise JobTimeout(f"job exceeded its queue's timeout of {seconds}s")

    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # not the main thread: django-q2's guard is the only limit
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
