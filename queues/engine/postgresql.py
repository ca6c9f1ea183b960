"""The storage engine on PostgreSQL: every statement the queue sends there, whole and named."""

from __future__ import annotations

import functools
from collections.abc import Hashable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.sql import Query, UpdateQuery
from django_q.models import OrmQ

from queues.core import uniqueness
from queues.django_q2 import push as pushing
from queues.django_q2.push import CHANNEL
from queues.engine import batch, counters
from queues.engine.base import Engine
from queues.engine.statements import (
    execute_together,
    insert_from_statement,
    insert_rows_statement,
    insert_statement,
)
from queues.models import Job

if TYPE_CHECKING:
    from queues.core.registry import JobType

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
        for v in (job.pk, job.queue, pushing._payload(job), job.run_after, pushing._priority(job))
    ]
    return sql, params


def update_returning_sql(update: QuerySet, values: dict[str, Any]) -> tuple[str, list[Any]]:
    """(sql, params) of `update.update(**values)`, as Django compiles it, returning a row for
    each row it changes: the condition of `store_if`."""
    query = update.query.chain(UpdateQuery)
    query.add_update_values(values)
    sql, params = query.get_compiler(update.db).as_sql()
    return f"{sql} RETURNING 1", list(params)


class PostgreSQLEngine(Engine):
    vendor = "postgresql"

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    def store(self, kind: JobType, jobs: list[Job]) -> list[Job]:
        """One statement per `ROWS_PER_STATEMENT` jobs: records, broker rows (with the NOTIFY)
        and counters, for the jobs actually inserted (`INSERT ... ON CONFLICT DO NOTHING` skips
        a duplicate). Only a duplicate costs a second round trip, to read its key's holder."""
        return batch.store(kind, jobs, self._insert)

    def store_job(self, kind: JobType, job: Job) -> Job:
        """One round trip: the record, which stores its broker row's id, the row (its RETURNING
        sends the NOTIFY, delivered at commit) and the counters. A unique type's job as `store`."""
        if kind.unique:
            return self.store(kind, [job])[0]
        # No savepoint inside the caller's transaction (two round trips saved): an error here
        # propagates and rolls the caller's transaction back anyway.
        with transaction.atomic(savepoint=False):
            if not pushing.broker_in_database():  # Redis: the row once the record commits
                job.broker_row = pushing.push(job)
                job.save(force_insert=True)
                counters.job_enqueued(job)
                return job
            row = (
                INSERT_BROKER_ROW,
                [job.queue, pushing._payload(job), job.run_after, pushing._priority(job)],
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
        if not pushing.broker_in_database():
            return batch.store_after_update(kind, job, update, values, self._insert)
        batch.set_unique_key(kind, [job])
        rows = self._insert_together(kind, [job], update_returning_sql(update, values))
        if not rows:
            return None
        ((job_id, broker_row, *_),) = rows
        if job_id is not None:
            return batch.stored(job, broker_row)
        # A duplicate: the change is made; the job is the holder's, or, should the holder have
        # finished meanwhile, stored now.
        return self.store(kind, [job])[0]

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
        return batch.store_retry(job)

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
                    batch.stored(job, rows[job.pk])
            stored |= set(rows)
        return stored

    def _insert_together(
        self, kind: JobType, jobs: list[Job], condition: tuple[str, list[Any]] | None = None
    ) -> list[tuple[Any, ...]]:
        """One statement storing `jobs`, their broker rows and counters; returns (id, broker row)
        of each job stored. With a `condition` (`store_if`: one job) it is a CTE the INSERT
        selects from, and the one row returned, if the condition returned one, is (id or None,
        broker row, the condition's columns...)."""
        in_database = pushing.broker_in_database()
        for job in jobs:
            job.broker_row = RawSQL(NEXT_BROKER_ROW_ID, []) if in_database else None
        if condition is None:
            insert, params = insert_rows_statement(jobs)
            statements = [(SELECT_STORED, [])]
        else:
            (job,) = jobs
            insert, params = insert_from_statement(job, "condition")
            statements = [(SELECT_STORED_IF, []), (*condition, "condition")]
        if kind.unique:
            insert += f" ON CONFLICT (unique_key) WHERE {holds_key_sql()} DO NOTHING"
        statements += [
            (f"{insert} RETURNING id, broker_row", params, "stored"),
            (*counters.jobs_enqueued_sql(kind.queue, kind.name, "stored"), "counted"),
        ]
        if in_database:
            statements.append((*broker_rows_of_stored(jobs), "broker_rows"))
        return execute_together(statements)

    # --- attempts: begin, finish, retry, cancel, counters, acknowledgement, liveness ----------

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------
