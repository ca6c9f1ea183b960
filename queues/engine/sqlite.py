"""The storage engine on SQLite: no advisory locks, no data-modifying CTEs, no NOTIFY."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.db import DEFAULT_DB_ALIAS, close_old_connections, connection, transaction
from django.db.models import Exists, OuterRef
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from queues.engine import liveness
from queues.engine.base import Claimed, Engine
from queues.engine.statements import upsert_statement
from queues.models import ClusterHeartbeat, Job, QueuePause

# --- broker rows ---------------------------------------------------------------------------------
# django-q2's broker table. A claim moves a row's `lock` (the time it may be handed out) past the
# visibility timeout, so the rows of a cluster that died come back by themselves.
TABLE = OrmQ._meta.db_table
# Acknowledge a delivery: its row goes.
DELETE_ROW = f"DELETE FROM {TABLE} WHERE id = %s"


class SQLiteEngine(Engine):
    vendor = "sqlite"

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    # --- attempts: begin, finish, retry, cancel, counters, acknowledgement, liveness ----------

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
