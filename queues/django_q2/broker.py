"""The broker of our queues: django-q2's ORM broker, delayed visibility, and a PostgreSQL fast path.

One module per role, as django-q2 lays out its own: this one claims rows and waits for them;
`queues.django_q2.push` writes them, `queues.django_q2.acknowledgement` deletes them with the job's
outcome, `queues.django_q2.heartbeats` reports the cluster, `queues.maintenance.rescuer` brings back
what dead clusters and workers left behind.

django-q2 has no delayed enqueue: its broker row's `lock` column is a visibility timeout (a row is
handed out once `lock` is in the past). We store a retry's broker row with `lock` set to the time
it may run, so a waiting retry lives in the database, survives any restart, and no worker sleeps.
Plugged in through `Q_CLUSTER["broker_class"]`, so it stays django-q2's cluster, admin and
`qcluster`.

On PostgreSQL (see docs/job-queue.md, "The broker"):
- one statement claims up to `bulk` due rows, by priority (the app's own jobs first within one),
  then oldest first, with `FOR UPDATE SKIP LOCKED` on the (key, priority, lock, id) index, one
  row in every OLDEST_EVERY oldest first whatever its priority, and tells when the next row
  falls due;
- a claimed row's key becomes `<queue>@<token>@<claimed at, epoch s>`, the token of a lock the
  pusher's connection holds (`queues.engine.liveness`), which hides it from other claims; its `lock`
  (due time) is kept.
  The rows of a cluster that died are known at once and handed out again, in their place in
  the queue, by the next rescue (`queues.maintenance.rescuer.free_dead_claims`), not after a
  visibility timeout;
- a push sends `NOTIFY` in the caller's transaction, which PostgreSQL delivers at commit, and an
  idle pusher waits on `LISTEN` until then or until the next row is due, instead of polling;
- the runner deletes a job's broker row in the transaction that records the job's outcome, so the
  monitor's acknowledgement costs nothing (`queues.django_q2.acknowledgement`).
SQLite keeps django-q2's polling and per-row claims (`_poll`), in the same order: by priority,
with one row in every OLDEST_EVERY the oldest due one.
"""

import os
import random
import time

import psycopg
from django.db import Error as DjangoDatabaseError
from django.db import connections
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf, logger
from django_q.models import OrmQ

from queues.conf import conf
from queues.core import pausing
from queues.django_q2.heartbeats import DatabaseHeartbeats
from queues.django_q2.push import CHANNEL, wake_pushers
from queues.engine import engine, liveness, reconnect
from queues.engine.statements import hot_cursor
from queues.maintenance.rescuer import needed_sql, rescue_due, rescue_now_and_then

# Longest sleep of an idle pusher, the safety net should a NOTIFY be missed. A pusher only stops
# between two dequeues, so this also bounds how long a cluster takes to stop; at 5 s an idle
# cluster's claims cost 0.2 statement/s.
IDLE_WAIT = 5.0
TABLE = OrmQ._meta.db_table

# One claimed row in every OLDEST_EVERY is the queue's oldest due row, whatever its priority,
# so a flood of urgent jobs slows the others down but never stops them (docs/job-queue.md,
# "Priorities"). The rest go by priority, then oldest first. Each part is one index scan.
OLDEST_EVERY = 4
# Parameters: key, now, key, how many by priority, key, now, key, how many oldest first,
# the claimed key, then the rescue condition's (if any), key, now.
# A claim re-keys its rows `<queue>@<token>@<claimed at, epoch s>`; the rescuer reads that key.
_CLAIM = f"""
WITH urgent AS (
    SELECT id, lock FROM {TABLE}
    WHERE key = %s AND lock <= %s AND NOT {pausing.paused_sql("%s")}
    ORDER BY priority, lock, id
    LIMIT %s
    FOR UPDATE SKIP LOCKED
), oldest AS (
    SELECT id, lock FROM {TABLE}
    WHERE key = %s AND lock <= %s AND NOT {pausing.paused_sql("%s")}
    AND id NOT IN (SELECT id FROM urgent)
    ORDER BY lock, id
    LIMIT %s
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id, lock FROM urgent UNION ALL SELECT id, lock FROM oldest
), claimed AS (
    UPDATE {TABLE} q SET key = %s FROM due WHERE q.id = due.id
    RETURNING q.id, q.payload, due.lock
)
SELECT id, payload, lock, false FROM claimed
UNION ALL
SELECT NULL, NULL, min(lock), {{rescue}} FROM {TABLE} WHERE key = %s AND lock > %s
"""


class JobBroker(DatabaseHeartbeats, ORM):
    # The runner deletes the delivery's row with the job's outcome
    # (`queues.django_q2.acknowledgement`).
    acknowledged_with_outcome = True
    # Whether this process's last dequeue failed on the database.
    _failed_last = False

    @property
    def fast(self):
        return connections[Conf.ORM].vendor == "postgresql"

    def enqueue(self, task, run_after=None, priority=0):
        queue = self.list_key or Conf.CLUSTER_NAME
        return engine(Conf.ORM).store_broker_row(
            queue, task, run_after or timezone.now(), priority, using=Conf.ORM
        )

    def dequeue(self):
        if not self.fast:
            rescue_now_and_then(self.list_key)
            return None if pausing.wait_if_paused(self.list_key) else self._poll()
        try:
            # The rescue's "anything to do?" rides on the claim (no statement of its own, even
            # while idle); the rescue itself runs only when it says so.
            check = rescue_due(self.list_key)
            tasks, next_due, needed = self._claim(with_rescue_check=check)
            # If the rescue brought rows back, the next dequeue claims them (no NOTIFY) at once.
            rescued = check and rescue_now_and_then(self.list_key, needed=needed)
            if not tasks and not rescued:
                self._wait(next_due)
        except (DjangoDatabaseError, psycopg.Error):
            # A lost connection (the claim's or the LISTEN one): drop both; the next dequeue
            # reconnects, at once after a first failure (a connection cut while idle), a second
            # later after another (the server is down).
            logger.exception("Broker claim failed; reconnecting")
            self._close()
            if self._failed_last:
                time.sleep(1)
            self._failed_last = True
            return None
        self._failed_last = False
        return tasks

    def _poll(self):
        """SQLite: django-q2's claim (a row is claimed by moving its `lock`, its visibility
        timeout, when no other cluster moved it first), taking due rows in `_CLAIM`'s order.
        Sleeps one poll interval when none is due."""
        due = self.get_connection().filter(key=self.list_key, lock__lt=timezone.now())
        done = getattr(self, "_claimed_so_far", 0)
        oldest = (done + Conf.BULK) // OLDEST_EVERY - done // OLDEST_EVERY
        columns = ("id", "lock", "payload")
        urgent = list(
            due.order_by(RawSQL("priority", []), "lock", "id").values_list(*columns)[
                : Conf.BULK - oldest
            ]
        )
        rest = due.exclude(id__in=[row[0] for row in urgent]).order_by("lock", "id")
        rows = sorted(
            urgent + list(rest.values_list(*columns)[:oldest]), key=lambda r: (r[1], r[0])
        )
        tasks = [
            (row_id, payload)
            for row_id, lock, payload in rows
            if self.get_connection().filter(id=row_id, lock=lock).update(lock=self.timeout(None))
        ]
        self._claimed_so_far = done + len(tasks)
        if not tasks:
            time.sleep(Conf.POLL)
            return None
        return tasks

    def _claim(self, with_rescue_check=False):
        """Claim up to `bulk` due rows in one statement; also return when the next row is due,
        and (`with_rescue_check`) whether the queue needs a rescue (`rescuer.needed_sql`).

        Skips django-q2's `close_old_connections()` per poll: with health checks on it costs a
        `SELECT 1` each time; `dequeue` reconnects after an error instead.
        """
        now = timezone.now()
        # Rows this pusher claimed so far: the slots numbered OLDEST_EVERY, 2 * OLDEST_EVERY, ...
        # take the oldest due rows.
        done = getattr(self, "_claimed_so_far", 0)
        oldest = (done + Conf.BULK) // OLDEST_EVERY - done // OLDEST_EVERY
        key = self.list_key
        claimed_key = f"{key}@{self._claims_token()}@{int(now.timestamp())}"
        rescue, rescue_params = needed_sql(key) if with_rescue_check else ("false", [])
        params = [key, now, key, Conf.BULK - oldest, key, now, key, oldest, claimed_key]
        params += [*rescue_params, key, now]
        # Prepared once per connection (two constant texts: with the rescue's check and without).
        # Planned anew for every claim, it cost the server 280 us of planning per claim beside
        # 300 us of running it (pg_stat_statements over a drain, docs/benchmarks.md).
        with hot_cursor(Conf.ORM) as cursor:
            cursor.execute(_CLAIM.format(rescue=rescue), params)
            rows = cursor.fetchall()
        claimed = sorted((due, row_id, payload) for row_id, payload, due, _ in rows if row_id)
        self._claimed_so_far = done + len(claimed)
        next_due, rescue_needed = next((d, r) for row_id, _, d, r in rows if row_id is None)
        return [(row_id, payload) for _, row_id, payload in claimed], next_due, rescue_needed

    def _claims_token(self):
        """The token this pusher tags its claims with; its lock is held by the claim connection.

        Taken again, with a new token, whenever that connection is a new one: the claims of the
        old connection then count as a dead cluster's, and are handed out again.
        """
        db = connections[Conf.ORM]
        db.ensure_connection()
        token = getattr(self, "_token", None)
        if token is not None and token[0] is db.connection:
            return token[1]
        with db.cursor() as cursor:
            while True:  # another live pusher may hold a random token already
                number = random.randrange(1, 2**31)
                cursor.execute(
                    "SELECT pg_try_advisory_lock(%s::int4, %s::int4)", [liveness.CLAIMS, number]
                )
                if cursor.fetchone()[0]:
                    break
        self._token = (db.connection, number)
        return number

    @reconnect.once(using=Conf.ORM)
    def wake_pushers(self):
        """Wake the queue's idle pushers now (a stopping cluster's own among them)."""
        wake_pushers(self.list_key)

    @reconnect.once(using=Conf.ORM)
    def delete(self, task_id):
        """The monitor's acknowledgement of a task the runner did not acknowledge (schedules):
        one autocommit statement instead of the ORM's BEGIN, DELETE, COMMIT."""
        if not self.fast:
            return super().delete(task_id)
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute(f"DELETE FROM {TABLE} WHERE id = %s", [task_id])

    def lock_size(self):
        """Rows claimed and not acknowledged yet (tagged with their pusher's token)."""
        if not self.fast:
            return super().lock_size()
        return self.get_connection().filter(key__startswith=f"{self.list_key}@").count()

    def _wait(self, next_due):
        """Sleep until a NOTIFY, the next due row, or IDLE_WAIT, whichever comes first."""
        timeout = min(IDLE_WAIT, conf.QUEUE_RESCUE_INTERVAL)
        if next_due is not None:
            timeout = min(timeout, max((next_due - timezone.now()).total_seconds(), 0.0))
        if timeout > 0:
            for _ in self._listener().notifies(timeout=timeout, stop_after=1):
                pass

    def _listener(self):
        """This process's own LISTEN connection (pushers are forked: never share a socket)."""
        listener = getattr(self, "_listen", None)
        if listener is not None and listener[0] == os.getpid() and not listener[1].closed:
            return listener[1]
        db = connections[Conf.ORM]
        conn = db.get_new_connection(db.get_connection_params())
        conn.autocommit = True
        conn.execute(f"LISTEN {CHANNEL}")
        self._listen = (os.getpid(), conn)
        return conn

    @reconnect.once(using=Conf.ORM)
    def hand_back(self, tasks):
        """Make the rows of claimed tasks that never started claimable again at once.

        A stopping cluster (`queues.django_q2.cluster`) calls this for what waited in its local
        queue, so another cluster runs those jobs now, in their place in the queue, instead of after
        the rescue notices its dead claims (SQLite: after the visibility timeout).
        """
        rows = OrmQ.objects.using(Conf.ORM).filter(pk__in=[task["ack_id"] for task in tasks])
        if not self.fast:
            rows.update(lock=timezone.now())  # django-q2's claim moved `lock` into the future
            return
        rows.update(key=self.list_key)  # untagged: its due time (`lock`) was kept
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, self.list_key])

    def _close(self):
        connections[Conf.ORM].close()
        listener = getattr(self, "_listen", None)
        if listener is not None and listener[0] == os.getpid():
            listener[1].close()
        self._listen = None
