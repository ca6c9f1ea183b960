"""The storage engine on PostgreSQL: every statement the queue sends there, whole and named."""

from __future__ import annotations

import functools
import math
import os
import random
from collections.abc import Hashable
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, cast
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import BooleanField, Field, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.sql import Query, UpdateQuery
from django.utils import timezone
from django_q.models import OrmQ
from psycopg.pq import TransactionStatus

from queues.core import uniqueness
from queues.django_q2 import payload as payloads
from queues.django_q2.acknowledgement import delivery_to_acknowledge
from queues.engine import batch, counters
from queues.engine.base import Claimed, Engine
from queues.engine.liveness import CLAIMS
from queues.engine.statements import (
    execute_together,
    hot_cursor,
    insert_from_statement,
    insert_rows_statement,
    insert_statement,
    upsert_statement,
)
from queues.models import HISTOGRAM_BUCKETS, ClusterHeartbeat, Job, bucket_column

if TYPE_CHECKING:
    from queues.core.registry import JobType

# The channel pushers LISTEN on; a NOTIFY's payload is the queue whose rows changed.
CHANNEL = "django_q_ormq"

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

# A progress report's connection waits this long at most for a job row another transaction holds
# locked (a handler locking its own record), then the report is given up: the handler goes on.
PROGRESS_LOCK_TIMEOUT = "SET lock_timeout TO '1s'"

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


# --- storing jobs ---------------------------------------------------------------------------

# A job's broker row, in the caller's transaction; the NOTIFY, delivered at commit, wakes the
# queue's pushers, also for a delayed row, so they wait for its due time. Returns the row's id.
INSERT_BROKER_ROW = f"""
INSERT INTO {OrmQ._meta.db_table} (key, payload, lock, priority) VALUES (%s, %s, %s, %s)
RETURNING id, pg_notify('{CHANNEL}', key)
"""

# The id a broker row inserted later in the same statement takes (the job record stores it).
NEXT_BROKER_ROW_ID = f"nextval(pg_get_serial_sequence('{OrmQ._meta.db_table}', 'id'))"

# The broker rows, and NOTIFYs, of the jobs the CTE `stored` returns (their `id`, and the
# `broker_row` each took): of a batch, those actually inserted, so a duplicate gets none.
BROKER_ROWS_OF_STORED = (
    f"INSERT INTO {OrmQ._meta.db_table} (id, key, payload, lock, priority)"
    " SELECT s.broker_row, p.key, p.payload, p.lock, p.priority"
    " FROM stored s JOIN (VALUES {rows}) p(job_id, key, payload, lock, priority)"
    f" ON p.job_id = s.id RETURNING pg_notify('{CHANNEL}', key)"
)
# One row of its VALUES list, per job.
BROKER_ROW_VALUES = "(%s::uuid, %s, %s, %s::timestamptz, %s::smallint)"

# Of a batch (the CTE `stored` is its INSERT ... RETURNING id, broker_row): what was stored.
SELECT_STORED = "SELECT id, broker_row FROM stored"
# Of `store_if` (the CTE `condition` is the change, `stored` the INSERT selecting from it): a row
# if the change matched one, with the job's id and broker row if it was stored (not a duplicate).
SELECT_STORED_IF = "SELECT s.id, s.broker_row, c.* FROM condition c LEFT JOIN stored s ON true"

# A unique type's waiting holder takes the data of a duplicate (`Unique(on_conflict="replace")`);
# a holder that began meanwhile is left as it is (no row comes back).
REPLACE_WAITING_DATA = """
UPDATE queues_job SET data = %s, subject = %s
WHERE id = %s AND status IN ('queued', 'retrying')
RETURNING id
"""

# Jobs per statement: a bigger batch takes several statements, in the same transaction.
ROWS_PER_STATEMENT = 500


@functools.cache
def holds_key_sql() -> str:
    """`uniqueness.HOLDS_KEY` as SQL with its values inline, compiled as Django compiles the
    constraint's condition, so ON CONFLICT infers the constraint's index from the same text."""
    query = Query(model=Job, alias_cols=False)
    where = query.build_where(uniqueness.HOLDS_KEY)
    sql, params = where.as_sql(query.get_compiler(connection=connection), connection)
    return sql % tuple(_literal(value) for value in params)


def _literal(value: int | str) -> str:
    """Our own constants only: statuses (no quotes in them) and bits."""
    if isinstance(value, int):
        return str(value)
    assert isinstance(value, str) and "'" not in value, value
    return f"'{value}'"


def broker_rows_of_stored(jobs: list[Job]) -> tuple[str, list[Any]]:
    """(sql, params) of `BROKER_ROWS_OF_STORED` for `jobs`."""
    sql = BROKER_ROWS_OF_STORED.format(rows=", ".join([BROKER_ROW_VALUES] * len(jobs)))
    params = [
        v
        for job in jobs
        for v in (job.pk, job.queue, payloads.payload(job), job.run_after, payloads.priority(job))
    ]
    return sql, params


def update_returning_sql(update: QuerySet, values: dict[str, Any]) -> tuple[str, list[Any]]:
    """(sql, params) of `update.update(**values)`, as Django compiles it, returning a row for
    each row it changes: the condition of `store_if`."""
    query = update.query.chain(UpdateQuery)
    query.add_update_values(values)
    sql, params = query.get_compiler(update.db).as_sql()
    return f"{sql} RETURNING 1", list(params)


# --- broker rows ---------------------------------------------------------------------------------
# django-q2's broker table; a row's `lock` is the time it may run. A claimed row is re-keyed
# `<queue>@<token>@<claimed at, epoch s>`: the token of the claims lock its pusher's connection
# holds (`queues.engine.liveness`), which hides it from other claims and tells a dead cluster's.
TABLE = OrmQ._meta.db_table
# First key of the lock that lets one cluster at a time rescue a queue ("rscu").
RESCUE = 0x72736375

# Claim up to `by_priority` due rows of an unpaused queue by priority, then oldest first, and
# `oldest` more oldest first, each part one index scan ((key, priority, lock, id) and
# (key, lock, id)), skipping rows other claims hold; re-key them with `claimed_key`, their due
# time kept. The last row tells when the queue's next row falls due and, with the rescue's check
# (CLAIM_AND_RESCUE_CHECK), whether the queue needs a rescue. Parameters: queue, now,
# by_priority, oldest, claimed_key (and the rescue check's: late, late_epoch, claimed_like).
_CLAIM = f"""
WITH urgent AS (
    SELECT id, lock FROM {TABLE}
    WHERE key = %(queue)s AND lock <= %(now)s
    AND NOT EXISTS (SELECT 1 FROM queues_queuepause WHERE queue = %(queue)s)
    ORDER BY priority, lock, id
    LIMIT %(by_priority)s
    FOR UPDATE SKIP LOCKED
), oldest AS (
    SELECT id, lock FROM {TABLE}
    WHERE key = %(queue)s AND lock <= %(now)s
    AND NOT EXISTS (SELECT 1 FROM queues_queuepause WHERE queue = %(queue)s)
    AND id NOT IN (SELECT id FROM urgent)
    ORDER BY lock, id
    LIMIT %(oldest)s
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id, lock FROM urgent UNION ALL SELECT id, lock FROM oldest
), claimed AS (
    UPDATE {TABLE} q SET key = %(claimed_key)s FROM due WHERE q.id = due.id
    RETURNING q.id, q.payload, due.lock
)
SELECT id, payload, lock, false FROM claimed
UNION ALL
SELECT NULL, NULL, min(lock), {{rescue}} FROM {TABLE} WHERE key = %(queue)s AND lock > %(now)s
"""

# A broker row of the queue claimed by a pusher whose claims lock nobody holds: that cluster
# died. The partial index of migration 0010 keeps this a lookup among claimed rows only.
_DEAD_CLAIM = f"""key LIKE '%%@%%' AND split_part(key, '@', 1) = %(queue)s
AND NOT EXISTS (
    SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2
    AND classid = {CLAIMS} AND objid = (split_part(key, '@', 2)::bigint)::oid
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
)"""

# A job whose liveness lock (a session lock on the first 8 bytes of its id, which pg_locks
# shows as classid and objid, objsubid 1) nobody holds: no worker runs its attempt.
_JOB_LOCK_HELD = """EXISTS (
    SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
    AND classid = (((
        'x' || replace(left((queues_job.id)::text, 18), '-', ''))::bit(64)::bigint >> 32
    ) & 4294967295)::oid
    AND objid = ((
        'x' || replace(left((queues_job.id)::text, 18), '-', ''))::bit(64)::bigint & 4294967295
    )::oid
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
)"""

# A `running` job of the queue whose worker is gone.
_LOST_ATTEMPT = f"""queues_job.queue = %(queue)s AND queues_job.status = 'running'
AND NOT {_JOB_LOCK_HELD}"""

# A row of the queue that will still be delivered: waiting its turn, or claimed since `late`
# (a row claimed longer ago for a job still waiting was lost in a worker killed before it began
# the job). `claimed_like` is the LIKE pattern of the queue's claimed keys.
_ROW_ON_ITS_WAY = """(r.key = %(queue)s OR (r.key LIKE %(claimed_like)s
AND NULLIF(split_part(r.key, '@', 3), '')::bigint >= %(late_epoch)s))"""

# How many of a queue's longest-due waiting jobs the rescue looks at for a lost broker row: a
# bound, so its check costs the same over 1,000 or 1,000,000 waiting jobs. A job deeper in the
# backlog whose row is gone is rescued once it comes this close to the head of its queue.
STRANDED_HORIZON = 1000

# A due waiting job of the queue whose delivery is lost, on the database broker: no row of its
# own on its way, or none at all when it is past `late` (less late, any row of its counts: it is
# waiting or being begun). Looked for in two bounded places: among the queue's STRANDED_HORIZON
# longest-due waiting jobs (job_waiting_due_idx), and among the jobs of rows claimed before
# `late` (the claimed rows' partial index of migration 0010, whose predicate the literal LIKE
# repeats, then job_waiting_row_idx): a job whose worker died before beginning it, however deep
# in the backlog it was claimed from.
_ROW_LOST = f"""NOT EXISTS (
    SELECT 1 FROM {TABLE} r WHERE r.id = j.broker_row
    AND ({_ROW_ON_ITS_WAY} OR j.run_after >= %(late)s)
)"""
_LONGEST_DUE = f"""SELECT id, broker_row, run_after FROM queues_job
    WHERE queue = %(queue)s AND status IN ('queued', 'retrying') AND run_after <= %(now)s
    ORDER BY run_after LIMIT {STRANDED_HORIZON}"""
_CLAIMED_LONG_AGO = f"""SELECT queues_job.id, queues_job.broker_row, queues_job.run_after
    FROM {TABLE} r JOIN queues_job ON queues_job.broker_row = r.id
    WHERE r.key LIKE '%%@%%' AND split_part(r.key, '@', 1) = %(queue)s
    AND NULLIF(split_part(r.key, '@', 3), '')::bigint < %(late_epoch)s
    AND queues_job.queue = %(queue)s AND queues_job.status IN ('queued', 'retrying')
    AND queues_job.run_after < %(late)s"""
_STRANDED = f"""(
    EXISTS (SELECT 1 FROM ({_LONGEST_DUE}) j WHERE {_ROW_LOST})
    OR EXISTS (SELECT 1 FROM ({_CLAIMED_LONG_AGO}) j WHERE {_ROW_LOST})
)"""
# The stranded jobs' ids, earliest due first (parameters as _STRANDED's, and limit).
STRANDED_IDS = f"""SELECT j.id FROM (({_LONGEST_DUE}) UNION ({_CLAIMED_LONG_AGO})) j
WHERE {_ROW_LOST} ORDER BY j.run_after LIMIT %(limit)s"""

# The same with the broker outside the database (Redis), which cannot be asked: due, past `late`.
_STRANDED_LATE = """EXISTS (SELECT 1 FROM queues_job WHERE queues_job.queue = %(queue)s
AND queues_job.status IN ('queued', 'retrying') AND queues_job.run_after < %(late)s)"""

# Whether a rescue of the queue has anything to do: a dead cluster's claim, a dead worker's
# attempt or, unless the queue is paused (its jobs wait on purpose), a stranded job. The rescue's
# own queries ask the same, one index lookup each.
_RESCUE_NEEDED = f"""(
    EXISTS (SELECT 1 FROM {TABLE} WHERE {_DEAD_CLAIM})
    OR EXISTS (SELECT 1 FROM queues_job WHERE {_LOST_ATTEMPT})
    OR (
        {{stranded}}
        AND NOT EXISTS (SELECT 1 FROM queues_queuepause WHERE queue = %(queue)s)
    )
)"""

# The claim, without and with the rescue's check on the database broker. Each a constant text,
# prepared once per connection.
CLAIM = _CLAIM.format(rescue="false")
CLAIM_AND_RESCUE_CHECK = _CLAIM.format(rescue=_RESCUE_NEEDED.format(stranded=_STRANDED))
# The rescue's check alone, on the database broker and outside it. Parameters: queue, now,
# late, and on the database broker late_epoch and claimed_like.
RESCUE_NEEDED = f"SELECT {_RESCUE_NEEDED.format(stranded=_STRANDED)}"
RESCUE_NEEDED_OFF_DATABASE = f"SELECT {_RESCUE_NEEDED.format(stranded=_STRANDED_LATE)}"
# Hand the rows dead clusters claimed out again, in their place in the queue (due time kept).
FREE_DEAD_CLAIMS = f"UPDATE {TABLE} SET key = %(queue)s WHERE {_DEAD_CLAIM}"
# One cluster at a time rescues a queue: a lock held until the rescue's transaction ends.
TAKE_RESCUE_LOCK = "SELECT pg_try_advisory_xact_lock(%s::int4, hashtext(%s))"
# The claims lock of a pusher's connection, (CLAIMS, token): held while the connection lives.
TAKE_CLAIMS_LOCK = "SELECT pg_try_advisory_lock(%s::int4, %s::int4)"
# Wake the pushers LISTENing on CHANNEL for a queue, at the commit of the caller's transaction.
NOTIFY = "SELECT pg_notify(%s, %s)"
LISTEN = f"LISTEN {CHANNEL}"
# Acknowledge a delivery: its row goes.
DELETE_ROW = f"DELETE FROM {TABLE} WHERE id = %s"


# Whether a job record of one of some types is about a subject: its content is to be erased.
KEEPS_CONTENT_ABOUT_CONDITION = (
    "EXISTS (SELECT 1 FROM queues_job WHERE subject = %s AND job_type = ANY(%s))"
)
KEEPS_CONTENT_ABOUT = f"SELECT {KEEPS_CONTENT_ABOUT_CONDITION}"


class PostgreSQLEngine(Engine):
    vendor = "postgresql"

    def keeps_content_about(self, subject: str, job_types: list[str]) -> bool:
        with hot_cursor() as cursor:
            cursor.execute(KEEPS_CONTENT_ABOUT, [subject, job_types])
            return cursor.fetchone()[0]

    def keeps_content_about_sql(self, subject: str, job_types: list[str]) -> tuple[str, list]:
        return KEEPS_CONTENT_ABOUT_CONDITION, [subject, job_types]

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    def store(self, kind: JobType, jobs: list[Job]) -> list[Job]:
        """One statement per `ROWS_PER_STATEMENT` jobs: records, broker rows (with the NOTIFY)
        and counters, for the jobs actually inserted (`INSERT ... ON CONFLICT DO NOTHING` skips
        a duplicate). Only a duplicate costs a second round trip, to read its key's holder."""
        return batch.store(kind, jobs, self._insert, self.replace_waiting)

    def store_job(self, kind: JobType, job: Job) -> Job:
        """One round trip: the record, which stores its broker row's id, the row (its RETURNING
        sends the NOTIFY, delivered at commit) and the counters. A unique type's job as `store`."""
        if kind.unique:
            return self.store(kind, [job])[0]
        # No savepoint inside the caller's transaction (two round trips saved): an error here
        # propagates and rolls the caller's transaction back anyway.
        with transaction.atomic(savepoint=False):
            if not self.broker_in_database():  # Redis: the row once the record commits
                job.broker_row = self.push(job)
                job.save(force_insert=True)
                counters.job_enqueued(job)
                return job
            row = (
                INSERT_BROKER_ROW,
                [job.queue, payloads.payload(job), job.run_after, payloads.priority(job)],
            )
            job.broker_row = RawSQL("SELECT id FROM broker_row", [])
            ((job.broker_row,),) = counters.job_enqueued(
                job, also=[insert_statement(job, returning="broker_row"), (*row, "broker_row")]
            )
            job._state.adding, job._state.db = False, DEFAULT_DB_ALIAS  # as `save()` leaves it
        return job

    def store_if(
        self, kind: JobType, job: Job, update: QuerySet, values: dict[str, Any]
    ) -> Job | None:
        """With the broker in the database, one statement: the queryset's UPDATE as a CTE the
        INSERT selects from, so it needs no transaction of its own (no BEGIN and COMMIT when the
        caller has none open). With Redis, the change then `store`, in one transaction."""
        if not self.broker_in_database():
            return batch.store_after_update(
                kind, job, update, values, self._insert, self.replace_waiting
            )
        batch.set_unique_key(kind, [job])
        rows = self._insert_together(kind, [job], update_returning_sql(update, values))
        if not rows:
            return None
        ((job_id, broker_row, *_),) = rows
        if job_id is not None:
            return batch.stored(job, broker_row, self.push)
        # A duplicate: the change is made; the job is the holder's, or, should the holder have
        # finished meanwhile, stored now.
        return self.store(kind, [job])[0]

    def replace_waiting(self, holder: Job, duplicate: Job) -> bool:
        """`REPLACE_WAITING_DATA`: whether `holder` still waited and took `duplicate`'s data."""
        data = Job._meta.get_field("data").get_db_prep_value(duplicate.data, connection)
        with connection.cursor() as cursor:
            cursor.execute(REPLACE_WAITING_DATA, [data, duplicate.subject, holder.pk])
            return cursor.fetchone() is not None

    def store_broker_row(
        self,
        queue: str,
        payload: str,
        run_after: datetime,
        priority: int = 0,
        using: str = DEFAULT_DB_ALIAS,
    ) -> int:
        """`INSERT_BROKER_ROW`; its NOTIFY wakes the queue's pushers at commit."""
        with connections[using].cursor() as cursor:
            cursor.execute(INSERT_BROKER_ROW, [queue, payload, run_after, priority])
            return cursor.fetchone()[0]

    def store_retry(self, job: Job) -> bool:
        """The record and a new broker row in a savepoint, then the operator's retry counted."""
        return batch.store_retry(job, self.push)

    def cancel_waiting(self, jobs: QuerySet, queue: str, job_type: str) -> int:
        """An UPDATE of the waiting ones, then the counters, if any changed."""
        return batch.cancel_waiting(jobs, queue, job_type)

    def _insert(self, kind: JobType, jobs: list[Job]) -> set[Hashable]:
        """Insert those of `jobs` whose unique key is free; return their ids."""
        stored: set[Hashable] = set()
        for start in range(0, len(jobs), ROWS_PER_STATEMENT):
            part = jobs[start : start + ROWS_PER_STATEMENT]
            rows = dict(self._insert_together(kind, part))
            for job in part:
                if job.pk in rows:
                    batch.stored(job, rows[job.pk], self.push)
            stored |= set(rows)
        return stored

    def _insert_together(
        self, kind: JobType, jobs: list[Job], condition: tuple[str, list[Any]] | None = None
    ) -> list[tuple[Any, ...]]:
        """One statement storing `jobs`, their broker rows and counters; returns (id, broker row)
        of each job stored. With a `condition` (`store_if`: one job) it is a CTE the INSERT
        selects from, and the one row returned, if the condition returned one, is (id or None,
        broker row, the condition's columns...)."""
        in_database = self.broker_in_database()
        for job in jobs:
            job.broker_row = RawSQL(NEXT_BROKER_ROW_ID, []) if in_database else None
        if condition is None:
            insert, params = insert_rows_statement(jobs)
            statements = [(SELECT_STORED, [])]
        else:
            (job,) = jobs
            insert, params = insert_from_statement(job, "condition")
            statements = [(SELECT_STORED_IF, []), (*condition, "condition")]
        if any(job.unique_key for job in jobs):  # a unique type's, or a periodic job's slot
            insert += f" ON CONFLICT (unique_key) WHERE {holds_key_sql()} DO NOTHING"
        statements += [
            (f"{insert} RETURNING id, broker_row", params, "stored"),
            (*counters.jobs_enqueued_sql(kind.queue, kind.name, "stored"), "counted"),
        ]
        if in_database:
            statements.append((*broker_rows_of_stored(jobs), "broker_rows"))
        return execute_together(statements)

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
            ack_id = delivery_to_acknowledge()
            if ack_id is not None:
                statements.append(self.delete_row_statement(ack_id))
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
        elif status == Job.Status.QUEUED:  # snoozed
            rows = counters.attempt_snoozed(job, also=statements)
        else:
            retry = status == Job.Status.RETRYING
            rows = counters.attempt_failed(job, seconds, retry=retry, also=statements)
        return bool(rows)

    # The connection of this process's progress reports, for the attempt running: (pid, it).
    _reporters: ClassVar[dict[str, tuple[int, Any]]] = {}

    def report_progress(self, job: Job) -> bool:
        """`finish_sql` for the two columns (no release). Inside the handler's transaction it is
        sent on a connection of its own, in autocommit, so it is visible at once and outlives a
        rollback; that connection gives up on a locked row after `PROGRESS_LOCK_TIMEOUT`."""
        fields = {"progress": job.progress, "progress_message": job.progress_message}
        sql, params = _finish_statement(job, fields, release=False)
        if not connection.in_atomic_block:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return bool(cursor.fetchall())
        reporter = self._reporter()
        try:
            with connection.wrap_database_errors:  # as Django's own errors
                return bool(reporter.execute(sql, params).fetchall())
        except Exception:
            if reporter.info.transaction_status != TransactionStatus.IDLE:
                reporter.close()  # broken: the next report opens another
            raise

    def end_progress_reports(self) -> None:
        """Close the attempt's progress connection, if it opened one: a worker holds no second
        connection between jobs."""
        reporter = self._reporters.pop(DEFAULT_DB_ALIAS, None)
        if reporter is not None and reporter[0] == os.getpid():
            reporter[1].close()

    def _reporter(self) -> Any:
        """This process's own autocommit connection for progress reports (workers are forked:
        never share a socket), open until the attempt ends (`end_progress_reports`)."""
        reporter = self._reporters.get(DEFAULT_DB_ALIAS)
        if reporter is not None and reporter[0] == os.getpid() and not reporter[1].closed:
            return reporter[1]
        with connection.wrap_database_errors:
            conn = connection.get_new_connection(connection.get_connection_params())
            conn.autocommit = True
            conn.execute(PROGRESS_LOCK_TIMEOUT)
        self._reporters[DEFAULT_DB_ALIAS] = (os.getpid(), conn)
        return conn

    def cancel_query(self) -> bool:
        """Ask the server to cancel it: it stops the query and drops its locks."""
        pg = connection.connection
        if pg is None or pg.info.transaction_status != TransactionStatus.ACTIVE:
            return False
        pg.cancel()
        return True

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------

    # This process's LISTEN connection per database alias: (pid, connection).
    _listeners: dict[str, tuple[int, Any]] = {}

    def claim(
        self,
        queue: str,
        by_priority: int,
        oldest: int,
        *,
        token: int | None = None,
        rescue_late: datetime | None = None,
        using: str = DEFAULT_DB_ALIAS,
    ) -> Claimed:
        """One statement (CLAIM): the rows, tagged with `token` (`take_claims_token`).

        Sent on `hot_cursor`, so each of its two texts is prepared once per connection.
        """
        now = timezone.now()
        params = {
            "queue": queue,
            "now": now,
            "by_priority": by_priority,
            "oldest": oldest,
            "claimed_key": f"{queue}@{token}@{int(now.timestamp())}",
        }
        sql = CLAIM
        if rescue_late is not None:
            sql = CLAIM_AND_RESCUE_CHECK
            params.update(_stranded_params(queue, rescue_late))
        with hot_cursor(using) as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        claimed = sorted((due, row_id, payload) for row_id, payload, due, _ in rows if row_id)
        next_due, rescue_needed = next((d, r) for row_id, _, d, r in rows if row_id is None)
        tasks = [(row_id, payload) for _, row_id, payload in claimed]
        return Claimed(tasks, next_due, rescue_needed)

    def take_claims_token(self, using: str = DEFAULT_DB_ALIAS) -> int:
        """A random token whose claims lock the connection `using` now holds, for its life."""
        with connections[using].cursor() as cursor:
            while True:  # another live pusher may hold a random token already
                token = random.randrange(1, 2**31)
                cursor.execute(TAKE_CLAIMS_LOCK, [CLAIMS, token])
                if cursor.fetchone()[0]:
                    return token

    def wait_for_rows(
        self, queue: str, next_due: datetime | None, longest: float, using: str = DEFAULT_DB_ALIAS
    ) -> None:
        """Wait on LISTEN for a NOTIFY, until `next_due` or for `longest` seconds at most."""
        timeout = longest
        if next_due is not None:
            timeout = min(timeout, max((next_due - timezone.now()).total_seconds(), 0.0))
        if timeout > 0:
            for _ in self._listener(using).notifies(timeout=timeout, stop_after=1):
                pass

    def _listener(self, using: str) -> Any:
        """This process's own LISTEN connection (pushers are forked: never share a socket)."""
        listener = self._listeners.get(using)
        if listener is not None and listener[0] == os.getpid() and not listener[1].closed:
            return listener[1]
        db = connections[using]
        conn = db.get_new_connection(db.get_connection_params())
        conn.autocommit = True
        conn.execute(LISTEN)
        self._listeners[using] = (os.getpid(), conn)
        return conn

    def stop_waiting(self, using: str = DEFAULT_DB_ALIAS) -> None:
        listener = self._listeners.pop(using, None)
        if listener is not None and listener[0] == os.getpid():
            listener[1].close()

    def notify(self, queue: str, using: str = DEFAULT_DB_ALIAS) -> None:
        with connections[using].cursor() as cursor:
            cursor.execute(NOTIFY, [CHANNEL, queue])

    def hand_back(self, queue: str, row_ids: list[int], using: str = DEFAULT_DB_ALIAS) -> None:
        """Untag the rows (their due time was kept) and wake the queue's pushers."""
        OrmQ.objects.using(using).filter(pk__in=row_ids).update(key=queue)
        self.notify(queue, using)

    def delete_row(self, row_id: int, using: str = DEFAULT_DB_ALIAS) -> None:
        """One autocommit statement, where the ORM sends BEGIN, DELETE, COMMIT."""
        with connections[using].cursor() as cursor:
            cursor.execute(DELETE_ROW, [row_id])

    def delete_row_statement(self, row_id: int) -> tuple[str, list]:
        return DELETE_ROW, [row_id]

    def claimed_rows(self, queue: str, using: str = DEFAULT_DB_ALIAS) -> int:
        """Rows tagged with a pusher's token."""
        return OrmQ.objects.using(using).filter(key__startswith=f"{queue}@").count()

    def free_dead_claims(self, queue: str, using: str = DEFAULT_DB_ALIAS) -> int:
        with connections[using].cursor() as cursor:
            cursor.execute(FREE_DEAD_CLAIMS, {"queue": queue})
            return cursor.rowcount

    def rescue_needed(self, queue: str, now: datetime, late: datetime) -> bool:
        """One statement (RESCUE_NEEDED): the queries of the rescue's passes, as EXISTS."""
        params = {"queue": queue, "now": now, "late": late}
        sql = RESCUE_NEEDED_OFF_DATABASE
        if self.broker_in_database():
            sql = RESCUE_NEEDED
            params.update(_stranded_params(queue, late))
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()[0]

    def take_rescue_lock(self, queue: str) -> bool:
        with connection.cursor() as cursor:
            cursor.execute(TAKE_RESCUE_LOCK, [RESCUE, queue])
            return cursor.fetchone()[0]

    def lost_attempts(self, queue: str, limit: int) -> list[Job]:
        """The `running` jobs whose liveness lock nobody holds (as _LOST_ATTEMPT)."""
        held = RawSQL(_JOB_LOCK_HELD, [], BooleanField())
        running = Job.objects.filter(queue=queue, status=Job.Status.RUNNING)
        return list(running.alias(held=held).filter(held=False).order_by("started_at")[:limit])

    def stranded_jobs(self, queue: str, now: datetime, late: datetime, limit: int) -> list[Job]:
        """As _STRANDED (the database broker) or _STRANDED_LATE (outside it)."""
        due = Job.objects.filter(queue=queue, status__in=Job.WAITING, run_after__lte=now)
        if not self.broker_in_database():
            return list(due.filter(run_after__lt=late).order_by("run_after")[:limit])
        params = {"queue": queue, "now": now, "limit": limit, **_stranded_params(queue, late)}
        with connection.cursor() as cursor:
            cursor.execute(STRANDED_IDS, params)
            ids = [row[0] for row in cursor.fetchall()]
        return list(Job.objects.filter(pk__in=ids).order_by("run_after"))

    def write_heartbeat(self, beat: ClusterHeartbeat) -> None:
        with connection.cursor() as cursor:
            cursor.execute(*upsert_statement(beat, "key"))


def _stranded_params(queue: str, late: datetime) -> dict:
    """The parameters _STRANDED adds to the rescue's check."""
    return {
        "late": late,
        "late_epoch": int(late.timestamp()),
        "claimed_like": connection.ops.prep_for_like_query(f"{queue}@") + "%",
    }
