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
3. on failure (own commit, also acknowledging): retry after a backoff, or fail for good.

Every write of an outcome names the attempt it belongs to (fencing): a worker whose attempt was
taken over writes nothing, and its work rolls back. The statement that records the outcome also
releases the liveness lock.

The runner never lets a job's own failure escape to django-q2: our job record holds the outcome,
and the broker row is acknowledged. Only trouble recording the outcome (the database is down)
escapes, leaving the row to be delivered again. A worker whose idle connection was cut meets it
as it begins: the begin runs again on a fresh connection (`queues.engine.reconnect`), so the job
starts now, with one attempt counted.
"""

import functools
import logging
import os
import signal
import socket
import time
import traceback
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from psycopg.pq import TransactionStatus

from queues.conf import conf
from queues.core import history, pausing, registry
from queues.django_q2.acknowledgement import acknowledgement
from queues.django_q2.push import push
from queues.engine import counters, liveness, reconnect
from queues.engine.statements import hot_cursor
from queues.errors import (
    JobCancelled,
    JobTimeout,
    PermanentJobError,
    SubjectGone,
    TransientJobError,
    WorkerLost,
    is_transient,
)
from queues.execution import cancellation, handlers, log_context, tracing
from queues.models import Job, JobEvent

logger = logging.getLogger("queues.runner")

# A broker row may be handed out this early (clock skew between hosts, rounding).
EARLY_TOLERANCE = timedelta(seconds=1)
# A delivery that meets another one beginning the same waiting job looks again this much later,
# in case that one gives the job up.
LOOK_AGAIN = timedelta(seconds=1)

_BEGIN = f"""
WITH attempt_lock AS MATERIALIZED (
    SELECT pg_try_advisory_lock({liveness.job_key_sql("%(id)s::uuid")}) AS held
), job AS (
    SELECT * FROM {Job._meta.db_table}
    WHERE id = %(id)s AND (SELECT held FROM attempt_lock)
    FOR UPDATE
)
SELECT attempt_lock.held, job.* FROM attempt_lock LEFT JOIN job ON true
"""


@functools.cache
def _begin_waiting_sql(pid):
    """One statement that begins an attempt of a waiting, due job, in the common case.

    It takes the job's liveness lock, marks the job running with one more attempt and counts the
    start (`counters.attempt_started_sql`). The UPDATE's own row lock is the only one it takes: a
    change committed meanwhile (a cancel) is seen, since PostgreSQL checks the WHERE again on the
    newest row version before updating it. Its own implicit transaction commits without waiting
    for the disk (`set_config(..., true)`, as `SET LOCAL`): visible to other sessions at once,
    durable with the next synchronous commit (the work's), since WAL is flushed in order. Only a
    crash of the database server can lose it, and then it loses the work too.

    Built once per process (`pid`: its counters' shard) with the constants written in, so per job
    psycopg (which quotes parameters in Python) quotes only the job's own values; the job's
    columns come back in `Job._meta.concrete_fields` order.
    """
    quote = connection.ops.quote_name
    table = quote(Job._meta.db_table)
    columns = ", ".join(f"j.{quote(field.column)}" for field in Job._meta.concrete_fields)
    waiting = ", ".join(f"'{status}'" for status in Job.WAITING)
    counted, counted_params = counters.attempt_started_sql("begun")
    sql = f"""
WITH attempt_lock AS MATERIALIZED (
    SELECT pg_try_advisory_lock({liveness.job_key_sql("%(id)s::uuid")}) AS held,
        set_config('synchronous_commit', 'off', true) AS async_commit
), begun AS (
    UPDATE {table} j
    SET status = %(running)s, attempts = j.attempts + 1, started_at = %(now)s, worker = %(worker)s
    WHERE j.id = %(id)s AND (SELECT held FROM attempt_lock)
    AND j.status IN ({waiting}) AND j.run_after <= %(due)s
    AND NOT EXISTS (SELECT 1 FROM queues_queuepause WHERE queue = j.queue)
    RETURNING {columns}
), counted AS ({counted})
SELECT attempt_lock.held, begun.* FROM attempt_lock LEFT JOIN begun ON true
"""
    return sql, counted_params


class AttemptSuperseded(Exception):
    """This worker's attempt was taken over by a newer one: its outcome must not be recorded."""


def run_job(job_id):
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
            release_if_held(job)
            return None
        except JobCancelled:
            record_stopped(job)
            return None
        except Exception as exc:  # every failure is recorded, then retried or failed
            if isinstance(exc, JobTimeout):
                discard_connection_if_busy()
            record_failure(job, exc)
            return None


def discard_connection_if_busy():
    """After a timeout the alarm may have interrupted Python code that was using the connection."""
    in_use = connection.connection is not None and not connection.in_atomic_block
    if in_use and not connection.is_usable():
        connection.close()


def release_if_held(job):
    """Give the job's lock back on a path that recorded nothing (a closed connection has none)."""
    if liveness.supported() and connection.connection is not None and connection.is_usable():
        liveness.release_job(job.pk)


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


def presumed_alive_for(job):
    """How long an attempt counts as alive where liveness cannot be proven (SQLite)."""
    return timedelta(seconds=conf.QUEUES[job.queue]["timeout"] + conf.QUEUE_REDELIVERY_GRACE)


def lock_for_attempt(job_id, now):
    """(whether this delivery may act on the job, the job locked for update or None).

    PostgreSQL: may act when this connection took the job's liveness lock, in the same statement
    that locks the job row. SQLite: unless a `running` attempt is younger than its presumed life.
    """
    if liveness.supported():
        rows = list(Job.objects.raw(_BEGIN, {"id": str(job_id)}))
        return rows[0].held, (rows[0] if rows[0].pk else None)
    job = Job.objects.filter(pk=job_id).first()
    live = (
        job is not None
        and job.status == Job.Status.RUNNING
        and job.started_at is not None
        and job.started_at > now - presumed_alive_for(job)
    )
    return not live, job


@reconnect.once
def begin_attempt(job_id):
    """Count a new attempt and mark the job running; None when this delivery has nothing to do.

    Run again on a fresh connection if the worker's was lost: what the failed run had not
    committed went with its session, and a begin it had committed left a `running` attempt
    whose lock went too, which the second run counts as lost (`count_lost_attempt`)."""
    now = timezone.now()
    if liveness.supported():
        held, job = begin_waiting(job_id, now)
        if job is not None:
            return job
        if not held:
            look_again_if_waiting(job_id, now)
            return None
        # Finished, not due yet, lost by its worker, or missing: the general path below decides,
        # under the lock it takes again.
        liveness.release_job(job_id)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Visible to other sessions at once, durable with the next synchronous commit (the
            # work's): WAL is flushed in order, so only a database crash that also loses the
            # work can lose this count. A worker crash cannot. Saves one disk flush per job.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        held, job = lock_for_attempt(job_id, now)
        if not held:
            look_again_if_waiting(job_id, now)
            return None
        if job is None or job.is_finished:
            release_if_held(job or Job(pk=job_id))
            return None
        if job.status in Job.WAITING and job.run_after > now + EARLY_TOLERANCE:
            release_if_held(job)
            return None  # a stale copy; the job's own broker row comes later
        if job.status in Job.WAITING and pausing.is_paused(job.queue):
            # Claimed before the pause: a new row waits in the paused queue, in its place.
            Job.objects.filter(pk=job.pk).update(broker_row=push(job))
            release_if_held(job)
            return None
        if job.status == Job.Status.RUNNING:
            # Its worker is provably gone (PostgreSQL) or long overdue (SQLite).
            if count_lost_attempt(job, now):
                job.save()
                release_if_held(job)
                return None
        else:
            counters.attempt_started(job)
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


def begin_waiting(job_id, now):
    """(whether this connection took the job's lock, the begun job or None): `_begin_waiting_sql`.

    The job is None unless it was waiting and due; the lock is then still held.
    """
    sql, params = _begin_waiting_sql(os.getpid())
    params = dict(
        params,
        id=str(job_id),
        running=Job.Status.RUNNING,
        now=now,
        due=now + EARLY_TOLERANCE,
        worker=worker_name(),
    )
    with hot_cursor() as cursor:
        cursor.execute(sql, params)
        held, *values = cursor.fetchone()
    return held, (_job_from_values(values) if values[0] is not None else None)


def worker_name():
    """host:pid of this worker process, as job records name the worker of their last attempt."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _job_from_values(values):
    """A Job from a plain cursor's values (a list) in `Job._meta.concrete_fields` order, as the
    ORM would load it: cheaper than `Job.objects.raw`, which resolves columns and converters anew
    for every query."""
    attnames, converters = _job_loading()
    for index, convert in converters:
        values[index] = convert(values[index], None, connection)
    return Job.from_db(connection.alias, attnames, values)


@functools.cache
def _job_loading():
    """(attribute names, [(index, converter)]) of `Job`'s columns: three of 28 have a converter
    (the JSON ones), so the others are not even looked at per job."""
    fields = Job._meta.concrete_fields
    converters = [(i, f.from_db_value) for i, f in enumerate(fields) if hasattr(f, "from_db_value")]
    return [field.attname for field in fields], converters


def look_again_if_waiting(job_id, now):
    """Another delivery holds the job. If it is only beginning a waiting job, it may still give
    the job up (a copy that came too early): a broker row due a moment later makes sure."""
    job = Job.objects.filter(pk=job_id, status__in=Job.WAITING).first()
    if job is not None and job.run_after <= now + EARLY_TOLERANCE:
        job.run_after = now + LOOK_AGAIN
        Job.objects.filter(pk=job.pk).update(broker_row=push(job))


def count_lost_attempt(job, now):
    """Record that the `running` attempt of `job` lost its worker. True when that failed the job."""
    lost = WorkerLost(f"worker {job.worker or '?'} died during attempt {job.attempts}")
    job.last_error, job.last_error_class = str(lost), WorkerLost.__name__
    final = job.attempts >= job.max_attempts
    counters.worker_lost(job, final=final)
    if final:
        job.status, job.finished_at = Job.Status.FAILED, now
        with log_context.bind(**log_fields(job)):
            logger.error("job failed for good: %s", lost)
    return final


def finish_statement(job, release=True, **fields):
    """(sql, params) writing `fields` if `job`'s attempt is still the job's current one.

    The fence: `status = running AND attempts = n`; a row comes back only when it was written. On
    PostgreSQL the same statement releases the job's liveness lock (only once the row is locked by
    the update, so a delivery that takes the lock next waits for this commit and sees the
    outcome). Written by hand: the runner's bookkeeping costs no ORM compilation.
    """
    fields.update(tracing.outcome_fields(job, fields))
    quote = connection.ops.quote_name
    assignments, params = [], []
    for name, value in fields.items():
        field = Job._meta.get_field(name)
        assignments.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    returning = "id"
    if release and liveness.supported():
        returning = f"pg_advisory_unlock({liveness.job_key_sql('id')})"
    sql = (
        f"UPDATE {quote(Job._meta.db_table)} SET {', '.join(assignments)}"
        f" WHERE id = %s AND status = %s AND attempts = %s RETURNING {returning}"
    )
    params += [Job._meta.pk.get_db_prep_value(job.pk, connection), Job.Status.RUNNING]
    return sql, [*params, job.attempts]


def work(job):
    """Run the handler and mark success, in one transaction."""
    kind = registry.find(job.job_type)
    if kind is None:
        raise PermanentJobError(f"unknown job type {job.job_type!r}")
    with transaction.atomic():
        with handler_timeout(conf.QUEUES[job.queue]["timeout"]), cancellation.checking(job):
            result = handlers.call(kind.handler, job)
        finished_at = timezone.now()
        seconds = (finished_at - job.started_at).total_seconds()
        outcome = finish_statement(
            job,
            status=Job.Status.SUCCEEDED,
            result=result,
            finished_at=finished_at,
            subject=kind.subject_of(job.data, result) or job.subject,
        )
        # One statement: the fenced outcome, its counters and the acknowledgement.
        recorded = counters.attempt_succeeded(job, seconds, also=[outcome, *acknowledgement()])
        if not recorded:
            raise AttemptSuperseded()  # rolls the work back, counters and acknowledgement too
    logger.info("job succeeded on attempt %s/%s in %.3fs", job.attempts, job.max_attempts, seconds)
    return result


def record_stopped(job):
    """The handler stopped at a stop request (`JobCancelled`); its work has rolled back. The job
    is recorded `cancelled`, by whoever asked, fenced and acknowledged like any outcome."""
    kind = registry.find(job.job_type)
    fields = {"status": Job.Status.CANCELLED, "finished_at": timezone.now()}
    if kind and any(name in job.data for name in kind.content_fields):
        fields["data"] = kind.without_content(job.data)  # it will not run again: erased
    with transaction.atomic():
        outcome = finish_statement(job, **fields)
        recorded = counters.attempt_cancelled(job, also=[outcome, *acknowledgement()])
        if not recorded:
            transaction.set_rollback(True)
        else:
            job.refresh_from_db(fields=["cancel_requested_by"])
            history.record([job], JobEvent.Action.STOPPED, by=job.cancel_requested_by)
    if not recorded:
        release_if_held(job)
        return
    logger.warning("job stopped by its handler at a stop request; cancelled")


def record_failure(job, exc, own_attempt=True):
    """Schedule a retry for a transient failure with attempts left; otherwise fail the job.

    `own_attempt=False` for a caller that is not the attempt's worker (the rescuer): it holds no
    liveness lock and acknowledges no delivery. Returns whether the outcome was recorded.
    """
    kind = registry.find(job.job_type)
    retry = is_transient(exc) and job.attempts < job.max_attempts
    now = timezone.now()
    fields = {
        "last_error": str(exc) or exc.__class__.__name__,
        "last_error_class": exc.__class__.__name__,
        "traceback": "".join(traceback.format_exception(exc)),
    }
    with transaction.atomic():
        if retry:
            delay = kind.retry_policy.delay_after(job.attempts)
            job.run_after = now + timedelta(seconds=delay)
            fields.update(status=Job.Status.RETRYING, run_after=job.run_after, broker_row=push(job))
        else:
            fields.update(status=Job.Status.FAILED, finished_at=now)
            if isinstance(exc, SubjectGone):  # nothing will ever use its content
                fields["data"] = kind.without_content(job.data)
        # One statement: the fenced outcome, its counters and (a worker's) the acknowledgement.
        recorded = counters.attempt_failed(
            job,
            (now - job.started_at).total_seconds(),
            retry=retry,
            also=[finish_statement(job, release=own_attempt, **fields)]
            + (acknowledgement() if own_attempt else []),
        )
        if not recorded:
            # A newer attempt owns the job: no counters, no acknowledgement, no retry row either.
            transaction.set_rollback(True)
    if not recorded:
        if own_attempt:
            release_if_held(job)
        return False
    if retry:
        # Expected (a transient error, retried): a warning, its traceback in the job record only.
        logger.warning(
            "job attempt failed, retrying in %.1fs: %s: %s",
            delay,
            exc.__class__.__name__,
            exc,
        )
    else:
        logger.error("job failed for good: %s: %s", exc.__class__.__name__, exc, exc_info=exc)
    return True


@contextmanager
def handler_timeout(seconds):
    """Stop the handler after `seconds` (main thread of a worker process only).

    Python code gets `JobTimeout` raised in it. A query running on PostgreSQL is cancelled
    instead: the server stops it and drops its locks, and the handler sees it fail, which the
    runner records as `JobTimeout` once the transaction has rolled back cleanly.
    """
    started = time.monotonic()

    def expire(signum, frame):
        pg = connection.connection if connection.vendor == "postgresql" else None
        if pg is not None and pg.info.transaction_status == TransactionStatus.ACTIVE:
            pg.cancel()
            signal.setitimer(signal.ITIMER_REAL, 1)  # again, should the query have just ended
            return
        raise JobTimeout(f"job exceeded its queue's timeout of {seconds}s")

    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # not the main thread: django-q2's guard is the only limit
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except Exception as exc:
        if was_cancelled(exc) and time.monotonic() - started >= seconds:
            raise JobTimeout(
                f"job exceeded its queue's timeout of {seconds}s; its query was cancelled"
            ) from exc
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def was_cancelled(exc):
    """A PostgreSQL `query_canceled` error (SQLSTATE 57014), as Django wraps it."""
    return getattr(exc.__cause__, "sqlstate", None) == "57014"
