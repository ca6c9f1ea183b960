"""The storage engine on PostgreSQL: every statement the queue sends there, whole and named."""

from __future__ import annotations

import os
import random
from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import BooleanField, Exists, OuterRef, Q
from django.db.models.expressions import RawSQL
from django.db.models.lookups import GreaterThanOrEqual
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from queues.engine.base import Claimed, Engine
from queues.engine.liveness import CLAIMS
from queues.engine.statements import hot_cursor, upsert_statement
from queues.models import ClusterHeartbeat, Job

# --- broker rows ---------------------------------------------------------------------------------
# django-q2's broker table; a row's `lock` is the time it may run. A claimed row is re-keyed
# `<queue>@<token>@<claimed at, epoch s>`: the token of the claims lock its pusher's connection
# holds (`queues.engine.liveness`), which hides it from other claims and tells a dead cluster's.
TABLE = OrmQ._meta.db_table
# The channel pushers LISTEN on; a NOTIFY's payload is the queue whose rows changed.
CHANNEL = "django_q_ormq"
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

# A due waiting job of the queue whose delivery is lost, on the database broker: no row of its
# own on its way, or none at all when it is past `late` (less late, any row of its counts: it is
# waiting or being begun). One anti-join on job_live_status_idx and the rows' primary key.
_STRANDED = f"""queues_job.queue = %(queue)s AND queues_job.run_after <= %(now)s
AND queues_job.status IN ('queued', 'retrying')
AND NOT EXISTS (
    SELECT 1 FROM {TABLE} r WHERE r.id = queues_job.broker_row
    AND ({_ROW_ON_ITS_WAY} OR queues_job.run_after >= %(late)s)
)"""

# The same with the broker outside the database (Redis), which cannot be asked: due, past `late`.
_STRANDED_LATE = """queues_job.queue = %(queue)s AND queues_job.run_after <= %(now)s
AND queues_job.status IN ('queued', 'retrying') AND queues_job.run_after < %(late)s"""

# Whether a rescue of the queue has anything to do: a dead cluster's claim, a dead worker's
# attempt or, unless the queue is paused (its jobs wait on purpose), a stranded job. The rescue's
# own queries ask the same, one index lookup each.
_RESCUE_NEEDED = f"""(
    EXISTS (SELECT 1 FROM {TABLE} WHERE {_DEAD_CLAIM})
    OR EXISTS (SELECT 1 FROM queues_job WHERE {_LOST_ATTEMPT})
    OR (
        EXISTS (SELECT 1 FROM queues_job WHERE {{stranded}})
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


class PostgreSQLEngine(Engine):
    vendor = "postgresql"

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    # --- attempts: begin, finish, retry, cancel, counters, acknowledgement, liveness ----------

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
        recent = RawSQL(
            "NULLIF(split_part(key, '@', 3), '')::bigint >= %s",
            [int(late.timestamp())],
            BooleanField(),
        )
        on_its_way = (
            Q(key=queue)
            | Q(key__startswith=f"{queue}@", recent=True)
            | Q(GreaterThanOrEqual(OuterRef("run_after"), late))
        )
        rows = OrmQ.objects.using(Conf.ORM).alias(recent=recent).filter(on_its_way)
        lost = due.exclude(Exists(rows.filter(pk=OuterRef("broker_row"))))
        return list(lost.order_by("run_after")[:limit])

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
