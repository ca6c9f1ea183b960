"""The storage engine on SQLite: no advisory locks, no data-modifying CTEs, no NOTIFY."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from django.db import connection
from django.db.models import Field

from queues.django_q2.acknowledgement import acknowledgement
from queues.engine import counters, liveness
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


class SQLiteEngine(Engine):
    vendor = "sqlite"

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

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
