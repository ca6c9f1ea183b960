"""The storage engine on SQLite: no advisory locks, no data-modifying CTEs, no NOTIFY."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import QuerySet
from django_q.models import OrmQ

from queues.django_q2 import push as pushing
from queues.engine import batch, counters
from queues.engine.base import Engine
from queues.models import Job

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

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------
