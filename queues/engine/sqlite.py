"""The storage engine on SQLite: no advisory locks, no data-modifying CTEs, no NOTIFY."""

from __future__ import annotations

import functools
import time
from collections.abc import Hashable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, close_old_connections, connection, connections, transaction
from django.db.models import Exists, Field, OuterRef, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from queues.django_q2.acknowledgement import delivery_to_acknowledge
from queues.engine import batch, counters, liveness
from queues.engine.base import Claimed, Engine
from queues.engine.statements import upsert_statement
from queues.models import ClusterHeartbeat, Job, QueuePause

if TYPE_CHECKING:
    from queues.core.registry import JobType

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


# --- storing jobs ---------------------------------------------------------------------------

# A job's broker row. No NOTIFY: pushers poll.
INSERT_BROKER_ROW = (
    f"INSERT INTO {OrmQ._meta.db_table} (key, payload, lock, priority) VALUES (%s, %s, %s, %s)"
)


# A unique type's waiting holder takes the data of a duplicate (`Unique(on_conflict="replace")`);
# a holder that began meanwhile is left as it is.
REPLACE_WAITING_DATA = """
UPDATE queues_job SET data = %s, subject = %s
WHERE id = %s AND status IN ('queued', 'retrying')
"""


# --- broker rows ---------------------------------------------------------------------------------
# django-q2's broker table. A claim moves a row's `lock` (the time it may be handed out) past the
# visibility timeout, so the rows of a cluster that died come back by themselves.
TABLE = OrmQ._meta.db_table
# Acknowledge a delivery: its row goes.
DELETE_ROW = f"DELETE FROM {TABLE} WHERE id = %s"


class SQLiteEngine(Engine):
    vendor = "sqlite"

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    def store(self, kind: JobType, jobs: list[Job]) -> list[Job]:
        """Job by job: SQLite's writers take turns (IMMEDIATE transactions), so looking for the
        holders of the jobs' keys first is race-free."""
        return batch.store(kind, jobs, self._insert, self.replace_waiting)

    def store_job(self, kind: JobType, job: Job) -> Job:
        """The broker row first, so the record is stored knowing it; then the counters."""
        if kind.unique:
            return self.store(kind, [job])[0]
        with transaction.atomic(savepoint=False):
            job.broker_row = self.push(job)
            job.save(force_insert=True)
            counters.job_enqueued(job)
        return job

    def store_if(
        self, kind: JobType, job: Job, update: QuerySet, values: dict[str, Any]
    ) -> Job | None:
        """The change, then `store` if it changed a row, in one transaction."""
        return batch.store_after_update(
            kind, job, update, values, self._insert, self.replace_waiting
        )

    def replace_waiting(self, holder: Job, duplicate: Job) -> bool:
        """`REPLACE_WAITING_DATA`: whether `holder` still waited and took `duplicate`'s data."""
        data = Job._meta.get_field("data").get_db_prep_value(duplicate.data, connection)
        pk = Job._meta.pk.get_db_prep_value(holder.pk, connection)
        with connection.cursor() as cursor:
            cursor.execute(REPLACE_WAITING_DATA, [data, duplicate.subject, pk])
            return cursor.rowcount == 1

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
        return batch.store_retry(job, self.push)

    def cancel_waiting(self, jobs: QuerySet, queue: str, job_type: str) -> int:
        """An UPDATE of the waiting ones, then the counters, if any changed."""
        return batch.cancel_waiting(jobs, queue, job_type)

    def _insert(self, kind: JobType, jobs: list[Job]) -> set[Hashable]:
        """Insert those of `jobs` whose unique key no job holds; return their ids."""
        held = batch.holders([job.unique_key for job in jobs])
        stored = [job for job in jobs if job.unique_key not in held]
        for job in stored:
            job.broker_row = self.push(job)
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
            ack_id = delivery_to_acknowledge()
            if ack_id is not None:
                statements.append(self.delete_row_statement(ack_id))
        status = fields["status"]
        if status == Job.Status.SUCCEEDED:
            rows = counters.attempt_succeeded(job, seconds, also=statements)
        elif status == Job.Status.CANCELLED:
            rows = counters.attempt_cancelled(job, also=statements)
        elif status == Job.Status.QUEUED:  # snoozed
            rows = counters.attempt_snoozed(job, also=statements)
        else:
            retry = status == Job.Status.RETRYING
            rows = counters.attempt_failed(job, seconds, retry=retry, also=statements)
        return bool(rows)

    def report_progress(self, job: Job) -> bool:
        """`finish_sql` for the two columns, in the handler's transaction: SQLite has one writer
        at a time, and it is that transaction (the outcome writes the report again)."""
        fields = {"progress": job.progress, "progress_message": job.progress_message}
        with connection.cursor() as cursor:
            cursor.execute(*_finish_statement(job, fields))
            return bool(cursor.fetchall())

    def cancel_query(self) -> bool:
        """Nothing to cancel: SQLite runs in the worker's own process (the timer's exception
        stops Python code)."""
        return False

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------

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
        """django-q2's claim (a row is claimed by moving its `lock` when no other cluster moved
        it first), taking due rows in PostgreSQL's order. Nothing of a paused queue. Whether a
        rescue is needed cannot be told here: yes, when asked."""
        if transaction.get_autocommit(using):  # as django-q2's ORM broker, before each poll
            close_old_connections()
        if QueuePause.objects.using(using).filter(queue=queue).exists():
            return Claimed([], None, rescue_late is not None)
        rows = OrmQ.objects.using(using)
        due = rows.filter(key=queue, lock__lt=timezone.now())
        columns = ("id", "lock", "payload")
        urgent = list(
            due.order_by(RawSQL("priority", []), "lock", "id").values_list(*columns)[:by_priority]
        )
        rest = due.exclude(id__in=[row[0] for row in urgent]).order_by("lock", "id")
        found = sorted(
            urgent + list(rest.values_list(*columns)[:oldest]), key=lambda r: (r[1], r[0])
        )
        hidden_until = timezone.now() + timedelta(seconds=Conf.RETRY)  # django-q2's `timeout`
        tasks = [
            (row_id, payload)
            for row_id, lock, payload in found
            if rows.filter(id=row_id, lock=lock).update(lock=hidden_until)
        ]
        return Claimed(tasks, None, rescue_late is not None)

    def take_claims_token(self, using: str = DEFAULT_DB_ALIAS) -> int | None:
        """None: claims are not tagged (they expire)."""
        return None

    def wait_for_rows(
        self, queue: str, next_due: datetime | None, longest: float, using: str = DEFAULT_DB_ALIAS
    ) -> None:
        """No NOTIFY: sleep django-q2's poll interval."""
        time.sleep(Conf.POLL)

    def stop_waiting(self, using: str = DEFAULT_DB_ALIAS) -> None:
        pass

    def notify(self, queue: str, using: str = DEFAULT_DB_ALIAS) -> None:
        """Nothing: pushers poll."""

    def hand_back(self, queue: str, row_ids: list[int], using: str = DEFAULT_DB_ALIAS) -> None:
        """Move `lock`, which the claim moved past the visibility timeout, back to now."""
        OrmQ.objects.using(using).filter(pk__in=row_ids).update(lock=timezone.now())

    def delete_row(self, row_id: int, using: str = DEFAULT_DB_ALIAS) -> None:
        OrmQ.objects.using(using).filter(pk=row_id).delete()

    def delete_row_statement(self, row_id: int) -> tuple[str, list]:
        return DELETE_ROW, [row_id]

    def claimed_rows(self, queue: str, using: str = DEFAULT_DB_ALIAS) -> int:
        """Rows whose `lock` a claim moved into the future (delayed rows count too)."""
        return OrmQ.objects.using(using).filter(key=queue, lock__gt=timezone.now()).count()

    def free_dead_claims(self, queue: str, using: str = DEFAULT_DB_ALIAS) -> int:
        """None to free: a dead cluster's claims expire with the visibility timeout."""
        return 0

    def rescue_needed(self, queue: str, now: datetime, late: datetime) -> bool:
        return True

    def take_rescue_lock(self, queue: str) -> bool:
        return True

    def lost_attempts(self, queue: str, limit: int) -> list[Job]:
        """The oldest `running` jobs presumed dead: begun longer ago than they may live."""
        running = Job.objects.filter(queue=queue, status=Job.Status.RUNNING)
        now = timezone.now()
        return [
            job
            for job in running.order_by("started_at")[:limit]
            if job.started_at is None or job.started_at < now - liveness.presumed_alive_for(job)
        ]

    def stranded_jobs(self, queue: str, now: datetime, late: datetime, limit: int) -> list[Job]:
        """On the database broker, the due waiting jobs without a broker row (a claimed row
        expires, so any row counts); outside it, those past `late`."""
        due = Job.objects.filter(queue=queue, status__in=Job.WAITING, run_after__lte=now)
        if not self.broker_in_database():
            return list(due.filter(run_after__lt=late).order_by("run_after")[:limit])
        rows = OrmQ.objects.using(Conf.ORM)
        lost = due.exclude(Exists(rows.filter(pk=OuterRef("broker_row"))))
        return list(lost.order_by("run_after")[:limit])

    def write_heartbeat(self, beat: ClusterHeartbeat) -> None:
        with connection.cursor() as cursor:
            cursor.execute(*upsert_statement(beat, "key"))
