"""The broker of our queues: django-q2's ORM broker, delayed visibility, and a PostgreSQL fast path.

django-q2 has no delayed enqueue: its broker row's `lock` column is a visibility timeout (a row is
handed out once `lock` is in the past). We store a retry's broker row with `lock` set to the time
it may run, so a waiting retry lives in the database, survives any restart, and no worker sleeps.
Plugged in through `Q_CLUSTER["broker_class"]`, so it stays django-q2's cluster, admin and
`qcluster`.

On PostgreSQL (see docs/job-queue.md, "The broker"):
- one statement claims up to `bulk` due rows, the app's own jobs first, then oldest first, with
  `FOR UPDATE SKIP LOCKED` on the (key, priority, lock, id) index, and tells when the next row
  falls due;
- a claimed row's key becomes `<queue>@<token>@<claimed at, epoch s>`, the token of a lock the
  pusher's connection holds (`queues.liveness`), which hides it from other claims; its `lock`
  (due time) is kept.
  The rows of a cluster that died are known at once and handed out again, in their place in
  the queue, by the next rescue (`free_dead_claims`), not after a visibility timeout;
- `enqueue` sends `NOTIFY` in the caller's transaction, which PostgreSQL delivers at commit, and an
  idle pusher waits on `LISTEN` until then or until the next row is due, instead of polling;
- the runner deletes a job's broker row in the transaction that records the job's outcome, so the
  monitor's acknowledgement costs nothing (`queues.signals`).
SQLite keeps django-q2's polling.
"""

import os
import random
import time
import uuid

import psycopg
from django.conf import settings
from django.db import Error as DjangoDatabaseError
from django.db import connections, transaction
from django.db.models import BooleanField, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.conf import Conf, logger
from django_q.models import OrmQ
from django_q.signals import post_execute_in_worker, pre_execute
from django_q.signing import SignedPackage

from queues import liveness, registry
from queues.heartbeats import DatabaseHeartbeats

CHANNEL = "django_q_ormq"
# Longest sleep of an idle pusher, the safety net should a NOTIFY be missed. A pusher only stops
# between two dequeues, so this also bounds how long a cluster takes to stop; at 5 s an idle
# cluster's claims cost 0.2 statement/s.
IDLE_WAIT = 5.0
TABLE = OrmQ._meta.db_table

# Parameters: key, now, bulk, claimed, then the rescue condition's (if any), key, now.
_CLAIM = f"""
WITH due AS (
    SELECT id, lock FROM {TABLE}
    WHERE key = %s AND lock <= %s
    ORDER BY priority, lock, id
    LIMIT %s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE {TABLE} q SET key = %s FROM due WHERE q.id = due.id
    RETURNING q.id, q.payload, due.lock
)
SELECT id, payload, lock, false FROM claimed
UNION ALL
SELECT NULL, NULL, min(lock), {{rescue}} FROM {TABLE} WHERE key = %s AND lock > %s
"""
# Rows claimed by a pusher whose claims lock nobody holds: that cluster died. The partial index
# of migration 0010 keeps this a lookup among claimed rows only. Parameter: the queue.
_DEAD_CLAIM = f"""key LIKE '%%@%%' AND split_part(key, '@', 1) = %s
AND NOT {liveness.claims_lock_held_sql("split_part(key, '@', 2)::bigint")}"""
_INSERT = f"""
INSERT INTO {TABLE} (key, payload, lock, priority) VALUES (%s, %s, %s, %s)
RETURNING id, pg_notify('{CHANNEL}', key)
"""


class JobBroker(DatabaseHeartbeats, ORM):
    @property
    def fast(self):
        return connections[Conf.ORM].vendor == "postgresql"

    def enqueue(self, task, run_after=None, priority=0):
        key, lock = self.list_key or Conf.CLUSTER_NAME, run_after or timezone.now()
        if not self.fast:
            return self.get_connection().create(key=key, payload=task, lock=lock).pk
        # The NOTIFY also wakes pushers for a delayed row, so they wait for its due time.
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute(_INSERT, [key, task, lock, priority])
            return cursor.fetchone()[0]

    def dequeue(self):
        if not self.fast:
            rescue_now_and_then(self.list_key)
            return super().dequeue()
        try:
            # The rescue's "anything to do?" rides on the claim (no statement of its own, even
            # while idle); the rescue itself runs only when it says so.
            check = rescue_due(self.list_key)
            tasks, next_due, needed = self._claim(with_rescue_check=check)
            if check and rescue_now_and_then(self.list_key, needed=needed):
                return tasks  # the next dequeue claims what came back (no NOTIFY), at once
            if not tasks:
                self._wait(next_due)
            return tasks
        except (DjangoDatabaseError, psycopg.Error):
            # A lost connection (the claim's or the LISTEN one): drop both; the next dequeue
            # reconnects.
            logger.exception("Broker claim failed; reconnecting")
            self._close()
            time.sleep(1)
            return None

    def _claim(self, with_rescue_check=False):
        """Claim up to `bulk` due rows in one statement; also return when the next row is due,
        and (`with_rescue_check`) whether the queue needs a rescue (`rescuer.needed_sql`).

        Skips django-q2's `close_old_connections()` per poll: with health checks on it costs a
        `SELECT 1` each time; `dequeue` reconnects after an error instead.
        """
        from queues.rescuer import needed_sql  # the rescuer pushes through this module

        now = timezone.now()
        claimed_key = f"{self.list_key}@{self._claims_token()}@{int(now.timestamp())}"
        rescue, rescue_params = needed_sql(self.list_key) if with_rescue_check else ("false", [])
        params = [self.list_key, now, Conf.BULK, claimed_key, *rescue_params, self.list_key, now]
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute(_CLAIM.format(rescue=rescue), params)
            rows = cursor.fetchall()
        claimed = sorted((due, row_id, payload) for row_id, payload, due, _ in rows if row_id)
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
        timeout = min(IDLE_WAIT, settings.QUEUE_RESCUE_INTERVAL)
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

    def hand_back(self, tasks):
        """Make the rows of claimed tasks that never started claimable again at once.

        A stopping cluster (`queues.cluster`) calls this for what waited in its local queue, so
        another cluster runs those jobs now, in their place in the queue, instead of after the
        rescue notices its dead claims (SQLite: after the visibility timeout).
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


def free_dead_claims(queue):
    """Hand out again, now, the rows of `queue` claimed by clusters that died. Returns how many."""
    if not JobBroker(queue).fast:
        return 0  # SQLite: django-q2's visibility timeout hands them out again
    with connections[Conf.ORM].cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET key = %s WHERE {_DEAD_CLAIM}", [queue, queue])
        return cursor.rowcount


def dead_claims_sql(queue):
    """(SQL, params): a condition true when `free_dead_claims(queue)` would free rows."""
    return f"EXISTS (SELECT 1 FROM {TABLE} WHERE {_DEAD_CLAIM})", [queue]


def rows_on_their_way(queue, claimed_since):
    """Broker rows of `queue` that will still be delivered: waiting their turn, or claimed since
    `claimed_since` (a row claimed longer ago for a job still waiting was lost in a worker killed
    before it began the job). SQLite: every row, since claims expire there."""
    rows = OrmQ.objects.using(Conf.ORM)
    if not JobBroker(queue).fast:
        return rows
    recent = RawSQL(
        "NULLIF(split_part(key, '@', 3), '')::bigint >= %s",
        [int(claimed_since.timestamp())],
        BooleanField(),
    )
    return rows.alias(recent=recent).filter(
        Q(key=queue) | Q(key__startswith=f"{queue}@", recent=True)
    )


def rescue_due(queue):
    """Whether QUEUE_RESCUE_INTERVAL has passed since this process last rescued `queue`."""
    return time.monotonic() >= _next_rescue.get(queue, 0.0)


def rescue_now_and_then(queue, needed=True):
    """Run the rescuer for `queue` if QUEUE_RESCUE_INTERVAL has passed since this process did.

    `needed=False`: the check sent with the claim found nothing to do; the interval restarts.
    Returns how many rows and jobs the rescue brought back.
    """
    if not rescue_due(queue):
        return 0
    _next_rescue[queue] = time.monotonic() + settings.QUEUE_RESCUE_INTERVAL
    if not needed:
        return 0
    from queues.rescuer import rescue  # the rescuer records outcomes through the runner

    try:
        return rescue(queue)
    except Exception:
        logger.exception("Rescue of queue %s failed; trying again later", queue)
        return 0


_next_rescue = {}


def broker_in_database():
    """Whether the configured broker keeps its rows in our database (and joins transactions)."""
    broker_class = import_string(Conf.BROKER_CLASS) if Conf.BROKER_CLASS else ORM
    return getattr(broker_class, "joins_transactions", True)


def push(job):
    """Store a broker row that makes a worker of `job.queue` run `job` at `job.run_after`.

    The row carries only the job's id: the data stays in the job record, so scrubbing a job's
    content never has to decode signed pickles.
    """
    broker = get_broker(job.queue)
    if not getattr(broker, "joins_transactions", True):
        # A broker outside the database (Redis) gets the row only once the job record commits.
        payload = _payload(job)
        transaction.on_commit(lambda: broker.enqueue(payload, run_after=job.run_after))
        return None
    # Our database broker, also under a cluster running django-q2's stock broker (the
    # benchmark's reference), whose `enqueue` knows no `run_after`.
    return JobBroker(job.queue).enqueue(
        _payload(job), run_after=job.run_after, priority=_priority(job)
    )


def push_statement(job):
    """As `push`, as (sql, params, name) for the caller to send as a CTE `name` of its own
    statement (`queues.statements`), whose RETURNING gives the row's id; PostgreSQL only.

    None on SQLite and when the queue's broker is outside the database: then `push` the job.
    """
    if connections[Conf.ORM].vendor != "postgresql" or not broker_in_database():
        return None
    return _INSERT, [job.queue, _payload(job), job.run_after, _priority(job)], "broker_row"


def _priority(job):
    """Client-enqueued jobs are claimed after the app's own (docs/job-queue.md, "Fair share")."""
    kind = registry.find(job.job_type)
    return 1 if kind is not None and kind.client_enqueueable else 0


def _payload(job):
    # The runner itself, pickled by reference: django-q2's worker then skips `pydoc.locate`.
    from queues.runner import run_job  # the runner pushes through this module

    package = {
        "id": uuid.uuid4().hex,
        "name": f"{job.job_type}:{job.id}",
        "func": run_job,
        "args": (str(job.id),),
        "kwargs": {},
        "started": timezone.now(),
        "cluster": job.queue,
    }
    return SignedPackage.dumps(package)


# The broker row this worker process is running, and whether the runner already deleted it.
_delivery = {"ack_id": None, "acknowledged": False}


def acknowledgement():
    """Statements deleting the running delivery's broker row, for the caller to send with the
    job's outcome (`queues.statements`), so both commit together; none outside a JobBroker
    worker (tests, the stock reference cluster). Once that commits, the monitor skips its own
    DELETE.
    """
    ack_id = _delivery["ack_id"]
    if ack_id is None:
        return []
    transaction.on_commit(lambda: _delivery.update(acknowledged=True), using=Conf.ORM)
    return [(f"DELETE FROM {TABLE} WHERE id = %s", [ack_id])]


def connect_signals():
    pre_execute.connect(_remember_delivery, dispatch_uid="queues.broker.remember_delivery")
    post_execute_in_worker.connect(
        _skip_acknowledged, dispatch_uid="queues.broker.skip_acknowledged"
    )


def _remember_delivery(sender, task, **kwargs):
    ours = f"{JobBroker.__module__}.{JobBroker.__qualname__}" == Conf.BROKER_CLASS
    _delivery.update(ack_id=task.get("ack_id") if ours else None, acknowledged=False)


def _skip_acknowledged(sender, task, **kwargs):
    if _delivery["acknowledged"]:
        task.pop("ack_id", None)  # the monitor acknowledges only tasks that carry one
    _delivery.update(ack_id=None, acknowledged=False)
