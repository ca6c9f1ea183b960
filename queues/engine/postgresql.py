"""The storage engine on PostgreSQL: every statement the queue sends there, whole and named."""

from __future__ import annotations

import functools
import math
import os
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from django.db import connection
from django.db.models import Field
from psycopg.pq import TransactionStatus

from queues.django_q2.acknowledgement import acknowledgement
from queues.engine import counters
from queues.engine.base import Engine
from queues.engine.statements import execute_together, hot_cursor
from queues.models import HISTOGRAM_BUCKETS, Job, bucket_column

# --- attempts ------------------------------------------------------------------------------------

# The general begin's transaction commits without waiting for the disk: visible to other sessions
# at once, durable with the next synchronous commit (the work's), since WAL is flushed in order.
# Only a crash of the database server can lose it, and then it loses the work too.
COMMIT_ASYNCHRONOUSLY = "SET LOCAL synchronous_commit TO OFF"

# Take the job's liveness lock (its key: the first 8 bytes of its UUID) and, only if this
# connection got it, lock the job's row: (held, the job's columns, all NULL when not held or
# missing).
LOCK_FOR_ATTEMPT = """
WITH attempt_lock AS MATERIALIZED (
    SELECT pg_try_advisory_lock(('x' || replace(left((%(id)s::uuid)::text, 18), '-', ''))::bit(64)::bigint) AS held
), job AS (
    SELECT * FROM queues_job
    WHERE id = %(id)s AND (SELECT held FROM attempt_lock)
    FOR UPDATE
)
SELECT attempt_lock.held, job.* FROM attempt_lock LEFT JOIN job ON true
"""  # noqa: E501

# Give back the liveness lock of a job (paths that record no outcome).
RELEASE_JOB_LOCK = "SELECT pg_advisory_unlock(('x' || replace(left((%s::uuid)::text, 18), '-', ''))::bit(64)::bigint)"  # noqa: E501


@functools.cache
def _observation(series: str) -> tuple[str, str, str]:
    """(columns, values, additions) adding one observation `o.seconds` of the histogram `series`
    to a `queues_jobcounter` upsert: its `_sum` and its cumulative buckets (`HISTOGRAM_BUCKETS`)."""
    columns = [f"{series}_sum"] + [bucket_column(series, bound) for bound in HISTOGRAM_BUCKETS]
    values = ["greatest(o.seconds, 0)"] + [
        "1" if math.isinf(bound) else f"(o.seconds <= {bound!r})::int"
        for bound in HISTOGRAM_BUCKETS
    ]
    additions = [f'{c} = "queues_jobcounter".{c} + excluded.{c}' for c in columns]
    return ", ".join(columns), ", ".join(values), ", ".join(additions)


@functools.cache
def begin_waiting_sql() -> str:
    """One statement that begins an attempt of a waiting, due job, in the common case.

    It takes the job's liveness lock, marks the job running with one more attempt (unless its
    queue is paused) and counts the start: its wait observed, `waiting` -1, `running` +1, in this
    process's counters shard. The UPDATE's own row lock is the only one it takes: a change
    committed meanwhile (a cancel) is seen, since PostgreSQL checks the WHERE again on the newest
    row version before updating it. Its implicit transaction commits without waiting for the disk
    (`set_config(..., true)`, as `COMMIT_ASYNCHRONOUSLY`). The job's columns come back in
    `Job._meta.concrete_fields` order (`_job_from_values`).
    """
    returning = ", ".join(f'j."{field.column}"' for field in Job._meta.concrete_fields)
    observed, observations, added = _observation("wait_seconds")
    return f"""
WITH attempt_lock AS MATERIALIZED (
    SELECT pg_try_advisory_lock(('x' || replace(left((%(id)s::uuid)::text, 18), '-', ''))::bit(64)::bigint) AS held,
        set_config('synchronous_commit', 'off', true) AS async_commit
), begun AS (
    UPDATE "queues_job" j
    SET status = %(running)s, attempts = j.attempts + 1, started_at = %(now)s, worker = %(worker)s
    WHERE j.id = %(id)s AND (SELECT held FROM attempt_lock)
    AND j.status IN ('queued', 'retrying') AND j.run_after <= %(due)s
    AND NOT EXISTS (SELECT 1 FROM queues_queuepause WHERE queue = j.queue)
    RETURNING {returning}
), counted AS (INSERT INTO "queues_jobcounter" (queue, job_type, shard, waiting, running, {observed}) SELECT s.queue, s.job_type, %(counter_shard)s, -1, 1, {observations} FROM begun s CROSS JOIN LATERAL (SELECT extract(epoch FROM s.started_at - s.run_after)::float8 AS seconds) o ON CONFLICT (queue, job_type, shard) DO UPDATE SET waiting = "queues_jobcounter".waiting + excluded.waiting, running = "queues_jobcounter".running + excluded.running, {added})
SELECT attempt_lock.held, begun.* FROM attempt_lock LEFT JOIN begun ON true
"""  # noqa: E501


@functools.cache
def finish_sql(columns: tuple[str, ...], release: bool) -> str:
    """Write the outcome's `columns` if the attempt is still the job's current one.

    The fence: `status = running AND attempts = n`; a row comes back only when it was written.
    With `release` (the attempt's own worker) the same statement gives back the job's liveness
    lock, only once the row is locked by the update, so a delivery that takes the lock next waits
    for this commit and sees the outcome.
    """
    assignments = ", ".join(f'"{column}" = %s' for column in columns)
    returning = (
        "pg_advisory_unlock(('x' || replace(left((id)::text, 18), '-', ''))::bit(64)::bigint)"
        if release
        else "id"
    )
    return (
        f'UPDATE "queues_job" SET {assignments}'
        f" WHERE id = %s AND status = %s AND attempts = %s RETURNING {returning}"
    )


def _finish_statement(job: Job, fields: dict[str, Any], *, release: bool) -> tuple[str, list[Any]]:
    """(`finish_sql`, its parameters) writing the outcome `fields` of `job`'s attempt."""
    columns, params = [], []
    for name, value in fields.items():
        field = cast(Field, Job._meta.get_field(name))
        columns.append(field.column)
        params.append(field.get_db_prep_save(value, connection))
    pk = Job._meta.pk.get_db_prep_value(job.pk, connection)
    return finish_sql(tuple(columns), release), [*params, pk, Job.Status.RUNNING, job.attempts]


# A success's counters, sent as CTEs of its outcome statement and prepared once per connection:
# `attempt` holds its five values (queue, job_type, shard, seconds, minute), read by the counters'
# upsert (`succeeded_counted_sql`) and this minute's (`SUCCEEDED_MINUTE`): five values for psycopg
# to adapt in Python for every job, where the two upserts as `counters` writes them take eleven.
SUCCEEDED_ATTEMPT = (
    "SELECT %s::varchar AS queue, %s::varchar AS job_type, %s::smallint AS shard,"
    " %s::float8 AS seconds, %s::timestamptz AS minute"
)
SUCCEEDED_MINUTE = (
    'INSERT INTO "queues_jobminute"'
    " (queue, job_type, minute, shard, succeeded, failed, run_seconds)"
    " SELECT a.queue, a.job_type, a.minute, a.shard, 1, 0, a.seconds FROM attempt a"
    " ON CONFLICT (queue, job_type, minute, shard) DO UPDATE SET"
    ' succeeded = "queues_jobminute".succeeded + excluded.succeeded,'
    ' run_seconds = "queues_jobminute".run_seconds + excluded.run_seconds'
)


@functools.cache
def succeeded_counted_sql() -> str:
    """A success in its counters row: `succeeded` +1, `running` -1, its run time observed."""
    observed, observations, added = _observation("run_seconds")
    return (
        f'INSERT INTO "queues_jobcounter" (queue, job_type, shard, succeeded, running, {observed})'
        f" SELECT a.queue, a.job_type, a.shard, 1, -1, {observations}"
        " FROM attempt a CROSS JOIN LATERAL (SELECT a.seconds AS seconds) o"
        " ON CONFLICT (queue, job_type, shard) DO UPDATE SET"
        ' succeeded = "queues_jobcounter".succeeded + excluded.succeeded,'
        f' running = "queues_jobcounter".running + excluded.running, {added}'
    )


def _job_from_values(values: list[Any]) -> Job:
    """A Job from a plain cursor's values in `Job._meta.concrete_fields` order, as the ORM would
    load it: cheaper than `Job.objects.raw`, which resolves columns and converters per query."""
    attnames, converters = _job_loading()
    for index, convert in converters:
        values[index] = convert(values[index], None, connection)
    return Job.from_db(connection.alias, attnames, values)


@functools.cache
def _job_loading() -> tuple[list[str], list[tuple[int, Any]]]:
    """(attribute names, [(index, converter)]) of `Job`'s columns: only the few with a converter
    (the JSON ones) are looked at per job."""
    fields = Job._meta.concrete_fields
    converters = [(i, f.from_db_value) for i, f in enumerate(fields) if hasattr(f, "from_db_value")]
    return [field.attname for field in fields], converters


class PostgreSQLEngine(Engine):
    vendor = "postgresql"

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    # --- attempts: begin, finish, retry, cancel, counters, acknowledgement, liveness ----------

    def begin(
        self, job_id: UUID | str, *, now: datetime, due: datetime, worker: str
    ) -> tuple[bool, Job | None]:
        """`begin_waiting_sql`: one round trip; the lock stays held when a job comes back."""
        params = {
            "id": str(job_id),
            "running": Job.Status.RUNNING,
            "now": now,
            "due": due,
            "worker": worker,
            "counter_shard": os.getpid() % counters.SHARDS,
        }
        with hot_cursor() as cursor:
            cursor.execute(begin_waiting_sql(), params)
            held, *values = cursor.fetchone()
        return held, (_job_from_values(values) if values[0] is not None else None)

    def commit_asynchronously(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute(COMMIT_ASYNCHRONOUSLY)

    def lock_for_attempt(self, job_id: UUID | str, now: datetime) -> tuple[bool, Job | None]:
        """May act when this connection took the job's liveness lock (`LOCK_FOR_ATTEMPT`)."""
        row: Any = next(iter(Job.objects.raw(LOCK_FOR_ATTEMPT, {"id": str(job_id)})))
        return row.held, (row if row.pk else None)

    def release(self, job_id: UUID | str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(RELEASE_JOB_LOCK, [str(job_id)])

    def release_if_connected(self, job_id: UUID | str) -> None:
        if connection.connection is not None and connection.is_usable():
            self.release(job_id)

    def finish(
        self, job: Job, fields: dict[str, Any], seconds: float = 0.0, *, own_attempt: bool = True
    ) -> bool:
        """`finish_sql` with the acknowledgement and the outcome's counters as its CTEs."""
        statements = [_finish_statement(job, fields, release=own_attempt)]
        if own_attempt:
            statements += acknowledgement()
        status = fields["status"]
        if status == Job.Status.SUCCEEDED:
            minute = counters.this_minute()
            attempt = [job.queue, job.job_type, os.getpid() % counters.SHARDS, seconds, minute]
            rows = execute_together(
                [
                    *statements,
                    (SUCCEEDED_ATTEMPT, attempt, "attempt"),
                    (succeeded_counted_sql(), []),
                    (SUCCEEDED_MINUTE, []),
                ]
            )
        elif status == Job.Status.CANCELLED:
            rows = counters.attempt_cancelled(job, also=statements)
        else:
            retry = status == Job.Status.RETRYING
            rows = counters.attempt_failed(job, seconds, retry=retry, also=statements)
        return bool(rows)

    def cancel_query(self) -> bool:
        """Ask the server to cancel it: it stops the query and drops its locks."""
        pg = connection.connection
        if pg is None or pg.info.transaction_status != TransactionStatus.ACTIVE:
            return False
        pg.cancel()
        return True

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------
