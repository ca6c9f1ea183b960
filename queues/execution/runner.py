"""What a `qcluster` worker runs for every broker row: one attempt of one job.

An attempt is three short steps, so a crash at any point leaves the job in a state the next
delivery understands:

1. begin (own commit): take the job's liveness lock (`queues.engine.liveness`), count the attempt
   and mark the job running. A delivery that cannot take the lock meets a live attempt and does
   nothing; one that takes it and finds the job `running` knows that attempt's worker is gone.
   A worker killed later still used this attempt, so a job that kills its worker every time ends
   `failed` instead of being redelivered forever.
2. work: the handler runs in one transaction that also marks the job succeeded and deletes its
   broker row, so the work, its success and its acknowledgement commit together or not at all.
   A handler that runs too long is stopped (`queues.execution.timeouts`).
3. on failure (own commit, also acknowledging): retry after a backoff, or fail for good, as the
   type's `RetryPolicy` says. A handler that snoozes (`Snooze`) is put back to wait instead, its
   attempt not counted.

Every write of an outcome names the attempt it belongs to (fencing): a worker whose attempt was
taken over writes nothing, and its work rolls back. The statement that records the outcome also
releases the liveness lock.

This module decides; the storage engine (`queues.engine`) sends every statement of an attempt
(`Engine.begin`, `lock_for_attempt`, `finish`, `release`), whichever the database.

The runner never lets a job's own failure escape to django-q2: our job record holds the outcome,
and the broker row is acknowledged. Only trouble recording the outcome (the database is down)
escapes, leaving the row to be delivered again. A worker whose idle connection was cut meets it
as it begins: the begin runs again on a fresh connection (`queues.engine.reconnect`), so the job
starts now, with one attempt counted.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from queues.conf import conf
from queues.core import history, pausing, registry
from queues.engine import engine, reconnect
from queues.errors import (
    JobCancelled,
    JobTimeout,
    PermanentJobError,
    Snooze,
    SubjectGone,
    TransientJobError,
    WorkerLost,
)
from queues.execution import cancellation, handlers, log_context, progress, tracing
from queues.execution.timeouts import discard_connection_if_busy, handler_timeout
from queues.models import Job, JobEvent

logger = logging.getLogger("queues.runner")

# A broker row may be handed out this early (clock skew between hosts, rounding).
EARLY_TOLERANCE = timedelta(seconds=1)
# A delivery that meets another one beginning the same waiting job looks again this much later,
# in case that one gives the job up.
LOOK_AGAIN = timedelta(seconds=1)


class AttemptSuperseded(Exception):
    """This worker's attempt was taken over by a newer one: its outcome must not be recorded."""


def run_job(job_id: UUID | str) -> Any:
    """Run one attempt of job `job_id` (django-q2 task entry point)."""
    ensure_database()
    job = begin_attempt(job_id)
    if job is None:
        return None
    with log_context.bind(**log_fields(job)), tracing.attempt(job):
        # DEBUG: a job's one INFO line is its outcome's, which names the attempt (its record
        # shows a running one); a second INFO line per job costs a worker measurable CPU.
        logger.debug("job attempt %s/%s started", job.attempts, job.max_attempts)
        try:
            return work(job)
        except AttemptSuperseded:
            logger.warning(
                "attempt %s was taken over by a newer one; nothing recorded", job.attempts
            )
            engine().release_if_connected(job.pk)
            return None
        except JobCancelled:
            record_stopped(job)
            return None
        except Snooze as snooze:
            record_snoozed(job, snooze.seconds)
            return None
        except Exception as exc:  # every failure is recorded, then retried or failed
            if isinstance(exc, JobTimeout):
                discard_connection_if_busy()
            record_failure(job, exc)
            return None


def log_fields(job: Job) -> dict[str, Any]:
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


def ensure_database() -> None:
    """Fail with a clear, retryable error when the database is missing or unreachable."""
    if not settings.DATABASES.get("default", {}).get("NAME"):
        raise TransientJobError("database not configured")
    try:
        connection.ensure_connection()
    except Exception as exc:
        raise TransientJobError(f"database unreachable: {exc.__class__.__name__}") from exc


@reconnect.once
def begin_attempt(job_id: UUID | str) -> Job | None:
    """Count a new attempt and mark the job running; None when this delivery has nothing to do.

    The common case, a waiting and due job, takes one statement (`Engine.begin`); anything else
    takes the general path, in a transaction, under the job's lock. Run again on a fresh
    connection if the worker's was lost: what the failed run had not committed went with its
    session, and a begin it had committed left a `running` attempt whose lock went too, which the
    second run counts as lost (`count_lost_attempt`)."""
    now = timezone.now()
    db = engine()
    held, job = db.begin(job_id, now=now, due=now + EARLY_TOLERANCE, worker=worker_name())
    if job is not None:
        return job
    if not held:
        look_again_if_waiting(job_id, now)
        return None
    # Finished, not due yet, lost by its worker, or missing (or no one-statement begin: SQLite):
    # the general path below decides, under the lock it takes again.
    db.release(job_id)
    with transaction.atomic():
        # Saves a disk flush per job (PostgreSQL): a worker crash cannot lose this commit, only
        # a database crash that also loses the work can.
        db.commit_asynchronously()
        held, job = db.lock_for_attempt(job_id, now)
        if not held:
            look_again_if_waiting(job_id, now)
            return None
        if job is None or job.is_finished:
            db.release_if_connected(job_id)
            return None
        if job.status in Job.WAITING and job.run_after > now + EARLY_TOLERANCE:
            db.release_if_connected(job_id)
            return None  # a stale copy; the job's own broker row comes later
        if job.status in Job.WAITING and pausing.is_paused(job.queue):
            # Claimed before the pause: a new row waits in the paused queue, in its place.
            db.redeliver(job)
            db.release_if_connected(job_id)
            return None
        if job.status == Job.Status.RUNNING:
            # Its worker is provably gone (PostgreSQL) or long overdue (SQLite).
            if count_lost_attempt(job, now):
                job.save()
                db.release_if_connected(job_id)
                return None
        else:
            db.count_started(job)
        job.status = Job.Status.RUNNING
        job.attempts += 1
        job.started_at = now
        job.worker = worker_name()
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


def worker_name() -> str:
    """host:pid of this worker process, as job records name the worker of their last attempt."""
    return f"{socket.gethostname()}:{os.getpid()}"


def look_again_if_waiting(job_id: UUID | str, now: datetime) -> None:
    """Another delivery holds the job. If it is only beginning a waiting job, it may still give
    the job up (a copy that came too early): a broker row due a moment later makes sure."""
    job = Job.objects.filter(pk=job_id, status__in=Job.WAITING).first()
    if job is not None and job.run_after <= now + EARLY_TOLERANCE:
        job.run_after = now + LOOK_AGAIN
        engine().redeliver(job)


def count_lost_attempt(job: Job, now: datetime) -> bool:
    """Record that the `running` attempt of `job` lost its worker. True when that failed the job."""
    lost = WorkerLost(f"worker {job.worker or '?'} died during attempt {job.attempts}")
    job.last_error, job.last_error_class = str(lost), WorkerLost.__name__
    final = job.attempts >= job.max_attempts
    engine().count_lost(job, final=final)
    if final:
        job.status, job.finished_at = Job.Status.FAILED, now
        with log_context.bind(**log_fields(job)):
            logger.error("job failed for good: %s", lost)
    return final


def finish(
    job: Job, fields: dict[str, Any], seconds: float = 0.0, own_attempt: bool = True
) -> bool:
    """Record the outcome `fields` of `job`'s attempt (`Engine.finish`), with what tracing stores
    with it; whether it was recorded (False: a newer attempt owns the job)."""
    fields.update(tracing.outcome_fields(job, fields))
    fields.update(progress.outcome_fields(job))
    return engine().finish(job, fields, seconds, own_attempt=own_attempt)


def ran_for(job: Job, until: datetime) -> float:
    """Seconds from the start of `job`'s attempt to `until`."""
    return (until - cast(datetime, job.started_at)).total_seconds()


def work(job: Job) -> Any:
    """Run the handler and mark success, in one transaction."""
    kind = registry.find(job.job_type)
    if kind is None:
        raise PermanentJobError(f"unknown job type {job.job_type!r}")
    timeout = attempt_timeout(job)
    with transaction.atomic():
        with (
            handler_timeout(timeout),
            cancellation.checking(job),
            progress.reporting(job) as reporter,
        ):
            result = handlers.call(kind.handler, job, timeout=timeout, reporter=reporter)
        finished_at = timezone.now()
        seconds = ran_for(job, finished_at)
        fields = {
            "status": Job.Status.SUCCEEDED,
            "result": result,
            "finished_at": finished_at,
            "subject": kind.subject_of(job.data, result) or job.subject,
        }
        if not finish(job, fields, seconds):
            raise AttemptSuperseded()  # rolls the work back, counters and acknowledgement too
    logger.info("job succeeded on attempt %s/%s in %.3fs", job.attempts, job.max_attempts, seconds)
    return result


def attempt_timeout(job: Job) -> float:
    """Seconds `job`'s attempt may run: its own timeout, else its type's, else its queue's; never
    more than its queue's (which sets the workers' guard and the redelivery of lost rows)."""
    kind = registry.find(job.job_type)
    most = conf.QUEUES[job.queue]["timeout"]
    return min(job.timeout or (kind.timeout if kind else None) or most, most)


def record_snoozed(job: Job, seconds: float) -> None:
    """The handler snoozed (`Snooze`); its work has rolled back. The job waits again, `queued`,
    due `seconds` from now with a new broker row, its attempt given back (`attempts` - 1), fenced
    and acknowledged like any outcome, and the snooze in its history."""
    now = timezone.now()
    job.run_after = now + timedelta(seconds=seconds)
    try:
        with transaction.atomic():
            fields: dict[str, Any] = {
                "status": Job.Status.QUEUED,
                "attempts": job.attempts - 1,
                "run_after": job.run_after,
                "broker_row": engine().push(job),
            }
            recorded = finish(job, fields, ran_for(job, now))
            if not recorded:
                transaction.set_rollback(True)
            else:
                detail = f"for {seconds:g}s, until {job.run_after.isoformat(timespec='seconds')}"
                history.record([job], JobEvent.Action.SNOOZED, detail=detail)
    except IntegrityError:  # a unique type whose key another waiting job took meanwhile
        record_failure(job, PermanentJobError("snoozed, but another job holds its unique key"))
        return
    if not recorded:
        engine().release_if_connected(job.pk)
        return
    logger.info("job snoozed for %gs (attempt %s not counted)", seconds, job.attempts)


def record_stopped(job: Job) -> None:
    """The handler stopped at a stop request (`JobCancelled`); its work has rolled back. The job
    is recorded `cancelled`, by whoever asked, fenced and acknowledged like any outcome."""
    kind = registry.find(job.job_type)
    fields: dict[str, Any] = {"status": Job.Status.CANCELLED, "finished_at": timezone.now()}
    if kind and any(name in job.data for name in kind.content_fields):
        fields["data"] = kind.without_content(job.data)  # it will not run again: erased
    with transaction.atomic():
        recorded = finish(job, fields)
        if not recorded:
            transaction.set_rollback(True)
        else:
            job.refresh_from_db(fields=["cancel_requested_by"])
            history.record([job], JobEvent.Action.STOPPED, by=job.cancel_requested_by)
    if not recorded:
        engine().release_if_connected(job.pk)
        return
    logger.warning("job stopped by its handler at a stop request; cancelled")


def record_failure(job: Job, exc: BaseException, own_attempt: bool = True) -> bool:
    """Schedule a retry when the type's policy retries `exc` and attempts are left; otherwise
    fail the job.

    `own_attempt=False` for a caller that is not the attempt's worker (the rescuer): it holds no
    liveness lock and acknowledges no delivery. Returns whether the outcome was recorded.
    """
    kind = registry.find(job.job_type)
    # A type no longer declared (removed from the code) cannot run again: it fails for good.
    policy = kind.retry_policy if kind is not None else None
    retry = policy is not None and policy.retries(exc) and job.attempts < job.max_attempts
    now = timezone.now()
    fields: dict[str, Any] = {
        "last_error": str(exc) or exc.__class__.__name__,
        "last_error_class": exc.__class__.__name__,
        "traceback": "".join(traceback.format_exception(exc)),
    }
    with transaction.atomic():
        if policy is not None and retry:
            if job.backoff_seconds is not None:  # the enqueue's
                policy = replace(policy, backoff_seconds=job.backoff_seconds)
            delay = policy.delay_after(job.attempts)
            job.run_after = now + timedelta(seconds=delay)
            fields.update(
                status=Job.Status.RETRYING, run_after=job.run_after, broker_row=engine().push(job)
            )
        else:
            fields.update(status=Job.Status.FAILED, finished_at=now)
            if kind is not None and isinstance(exc, SubjectGone):  # its content is never used
                fields["data"] = kind.without_content(job.data)
        # One statement: the fenced outcome, its counters and (a worker's) the acknowledgement.
        seconds = ran_for(job, now)
        recorded = finish(job, fields, seconds, own_attempt=own_attempt)
        if not recorded:
            # A newer attempt owns the job: no counters, no acknowledgement, no retry row either.
            transaction.set_rollback(True)
    if not recorded:
        if own_attempt:
            engine().release_if_connected(job.pk)
        return False
    if retry:
        # Expected (retried): a warning, its traceback in the job record only.
        logger.warning(
            "job attempt failed, retrying in %.1fs: %s: %s",
            delay,
            exc.__class__.__name__,
            exc,
        )
    else:
        logger.error("job failed for good: %s: %s", exc.__class__.__name__, exc, exc_info=exc)
    return True
