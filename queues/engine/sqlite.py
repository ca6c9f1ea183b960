"""The storage engine on SQLite: no advisory locks, no data-modifying CTEs, no NOTIFY."""

from __future__ import annotations

import functools
from collections.abc import Hashable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import Field, QuerySet
from django_q.models import OrmQ

from queues.django_q2 import push as pushing
from queues.django_q2.acknowledgement import acknowledgement
from queues.engine import batch, counters, liveness
from queues.engine.base import Engine
from queues.models import Job

# --- attempts ------------------------------------------------------------------------------------


@functools.cache
def finish_sql(columns: tuple[str, ...]) -> str:
    """Write the outcome's `columns` if the attempt is still the job's current one.

    The fence: `status = running AND attempts = n`; a row comes back only when it was written.
    """
    assignments = ", ".join(f'"{column}" = %s' for column in columns)
    return (
        f'UPDATE "queues_job" SET {assignments}'
        " WHERE id = %s AND status = %s AND attempts = %s RETURNING id"
    )


def _finish_statement(job: Job, fields: dict[str, Any]) -> tuple[str, list[Any]]:
    """(`finish_sql`, its parameters) writing the outcome `fields` of `job`'s attempt."""
    columns, params = [], []
    for name, value in fields.items():
        field = cast(Field, Job._meta.get_field(name))
        columns.append(field.column)
        params.append(field.get_db_prep_save(value, connection))
    pk = Job._meta.pk.get_db_prep_value(job.pk, connection)
    return finish_sql(tuple(columns)), [*params, pk, Job.Status.RUNNING, job.attempts]


if TYPE_CHECKING:
    from queues.core.registry import JobType

# --- storing jobs ---------------------------------------------------------------------------

# A job's broker row. No NOTIFY: pushers poll.
INSERT_BROKER_ROW = (
    f"INSERT INTO {OrmQ._meta.db_table} (key, payload, lock, priority) VALUES (%s, %s, %s, %s)"
)


class SQLiteEngine(Engine):
    vendor = "sqlite"

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    def store(self, kind: JobType, jobs: list[Job]) -> list[Job]:
        """Job by job: SQLite's writers take turns (IMMEDIATE transactions), so looking for the
        holders of the jobs' keys first is race-free."""
        return batch.store(kind, jobs, self._insert)

    def store_job(self, kind: JobType, job: Job) -> Job:
        """The broker row first, so the record is stored knowing it; then the counters."""
        if kind.unique:
            return self.store(kind, [job])[0]
        with transaction.atomic(savepoint=False):
            job.broker_row = pushing.push(job)
            job.save(force_insert=True)
            counters.job_enqueued(job)
        return job

    def store_if(
        self, kind: JobType, job: Job, update: QuerySet, values: dict[str, Any]
    ) -> Job | None:
        """The change, then `store` if it changed a row, in one transaction."""
        return batch.store_after_update(kind, job, update, values, self._insert)

    def store_broker_row(
        self,
        queue: str,
        payload: str,
        run_after: datetime,
        priority: int = 0,
        using: str = DEFAULT_DB_ALIAS,
    ) -> int:
        """`INSERT_BROKER_ROW`, its due time as SQLite stores a datetime."""
        db = connections[using]
        with db.cursor() as cursor:
            lock = db.ops.adapt_datetimefield_value(run_after)
            cursor.execute(INSERT_BROKER_ROW, [queue, payload, lock, priority])
            return cursor.lastrowid

    def store_retry(self, job: Job) -> bool:
        """The record and a new broker row in a savepoint, then the operator's retry counted."""
        return batch.store_retry(job)

    def cancel_waiting(self, jobs: QuerySet, queue: str, job_type: str) -> int:
        """An UPDATE of the waiting ones, then the counters, if any changed."""
        return batch.cancel_waiting(jobs, queue, job_type)

    def _insert(self, kind: JobType, jobs: list[Job]) -> set[Hashable]:
        """Insert those of `jobs` whose unique key no job holds; return their ids."""
        held = batch.holders([job.unique_key for job in jobs])
        stored = [job for job in jobs if job.unique_key not in held]
        for job in stored:
            job.broker_row = pushing.push(job)
            job.save(force_insert=True)
            counters.job_enqueued(job)
        return {job.pk for job in stored}

    # --- attempts: begin, finish, retry, cancel, counters, acknowledgement, liveness ----------

    def begin(
        self, job_id: UUID | str, *, now: datetime, due: datetime, worker: str
    ) -> tuple[bool, Job | None]:
        """No one-statement begin here: (True, None) sends the caller to `lock_for_attempt`."""
        return True, None

    def commit_asynchronously(self) -> None:
        """Nothing: SQLite's commits are the database file's own."""

    def lock_for_attempt(self, job_id: UUID | str, now: datetime) -> tuple[bool, Job | None]:
        """May act unless a `running` attempt is younger than its presumed life (no locks here:
        `liveness.presumed_alive_for`); SQLite's writes are serialized anyway."""
        job = Job.objects.filter(pk=job_id).first()
        live = (
            job is not None
            and job.status == Job.Status.RUNNING
            and job.started_at is not None
            and job.started_at > now - liveness.presumed_alive_for(job)
        )
        return not live, job

    def release(self, job_id: UUID | str) -> None:
        """Nothing: no liveness locks on SQLite."""

    def release_if_connected(self, job_id: UUID | str) -> None:
        """Nothing: no liveness locks on SQLite."""

    def finish(
        self, job: Job, fields: dict[str, Any], seconds: float = 0.0, *, own_attempt: bool = True
    ) -> bool:
        """`finish_sql`, then the outcome's counters; the acknowledgement for the attempt's own
        worker."""
        statements = [_finish_statement(job, fields)]
        if own_attempt:
            statements += acknowledgement()
        status = fields["status"]
        if status == Job.Status.SUCCEEDED:
            rows = counters.attempt_succeeded(job, seconds, also=statements)
        elif status == Job.Status.CANCELLED:
            rows = counters.attempt_cancelled(job, also=statements)
        else:
            retry = status == Job.Status.RETRYING
            rows = counters.attempt_failed(job, seconds, retry=retry, also=statements)
        return bool(rows)

    def cancel_query(self) -> bool:
        """Nothing to cancel: SQLite runs in the worker's own process (the timer's exception
        stops Python code)."""
        return False

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------
