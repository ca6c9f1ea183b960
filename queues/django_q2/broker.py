"""The broker of our queues: django-q2's ORM broker, with delayed rows and claims in priority order.

django-q2 has no delayed enqueue: its broker row's `lock` column is a visibility timeout (a row is
handed out once `lock` is in the past). We store a retry's row with `lock` set to the time it may
run, so a waiting retry lives in the database, survives any restart, and no worker sleeps.
Plugged in through `Q_CLUSTER["broker_class"]`, so it stays django-q2's cluster, admin and
`qcluster`.

Each dequeue claims up to `bulk` due rows by priority, with one in every OLDEST_EVERY the oldest
due row whatever its priority, so urgent jobs slow the others down but never stop them. With
nothing claimed the pusher waits for a push, the next due row, or IDLE_WAIT. How rows are claimed
and waited for is the storage engine's (`queues.engine`): on PostgreSQL one statement, claims
that a dead cluster's rescue can tell, and LISTEN; on SQLite django-q2's polled claim.
"""

from __future__ import annotations

import time
from datetime import datetime

import psycopg
from django.db import Error as DjangoDatabaseError
from django.db import connections
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf, logger

from queues.conf import conf
from queues.django_q2.heartbeats import DatabaseHeartbeats
from queues.engine import engine, reconnect
from queues.engine.base import Claimed
from queues.maintenance.rescuer import rescue_due, rescue_now_and_then, stranded_before

# Longest sleep of an idle pusher, the safety net should a NOTIFY be missed. A pusher only stops
# between two dequeues, so this also bounds how long a cluster takes to stop.
IDLE_WAIT = 5.0
# One claimed row in every OLDEST_EVERY is the queue's oldest due row, whatever its priority
# (docs/job-queue.md, "Priorities"); the rest go by priority, then oldest first.
OLDEST_EVERY = 4


class JobBroker(DatabaseHeartbeats, ORM):
    # The runner deletes the delivery's row with the job's outcome
    # (`queues.django_q2.acknowledgement`).
    acknowledged_with_outcome = True
    # Whether this process's last dequeue failed on the database.
    _failed_last = False

    def enqueue(self, task: str, run_after: datetime | None = None, priority: int = 0) -> int:
        """Store a broker row carrying `task`, due at `run_after` (now); its id."""
        queue = self.list_key or Conf.CLUSTER_NAME
        return engine(Conf.ORM).store_broker_row(
            queue, task, run_after or timezone.now(), priority, using=Conf.ORM
        )

    def dequeue(self) -> list[tuple[int, str]] | None:
        """Claim due rows; with none, wait until some may be due. Rescues the queue now and then.

        The rescue's "anything to do?" rides on the claim (no statement of its own, even while
        idle); the rescue itself runs only when it says so.
        """
        try:
            check = rescue_due(self.list_key)
            tasks, next_due, needed = self._claim(with_rescue_check=check)
            # If the rescue brought rows back, the next dequeue claims them at once.
            rescued = check and rescue_now_and_then(self.list_key, needed=needed)
            if not tasks and not rescued:
                longest = min(IDLE_WAIT, conf.QUEUE_RESCUE_INTERVAL)
                engine(Conf.ORM).wait_for_rows(self.list_key, next_due, longest, using=Conf.ORM)
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

    def _claim(self, with_rescue_check: bool = False) -> Claimed:
        """Claim up to `bulk` due rows; also say when the next row is due and
        (`with_rescue_check`) whether the queue needs a rescue.

        Skips django-q2's `close_old_connections()` per poll on PostgreSQL: with health checks
        on it costs a `SELECT 1` each time; `dequeue` reconnects after an error instead.
        """
        # Rows this pusher claimed so far: the slots numbered OLDEST_EVERY, 2 * OLDEST_EVERY, ...
        # take the oldest due rows.
        done = getattr(self, "_claimed_so_far", 0)
        oldest = (done + Conf.BULK) // OLDEST_EVERY - done // OLDEST_EVERY
        claimed = engine(Conf.ORM).claim(
            self.list_key,
            Conf.BULK - oldest,
            oldest,
            token=self._claims_token(),
            rescue_late=stranded_before(timezone.now()) if with_rescue_check else None,
            using=Conf.ORM,
        )
        self._claimed_so_far = done + len(claimed.tasks)
        return claimed

    def _claims_token(self) -> int | None:
        """The token this pusher tags its claims with, whose lock its claim connection holds.

        Taken again, with a new token, whenever that connection is a new one: the claims of the
        old connection then count as a dead cluster's, and are handed out again.
        """
        db = connections[Conf.ORM]
        db.ensure_connection()
        token = getattr(self, "_token", None)
        if token is None or token[0] is not db.connection:
            token = self._token = (db.connection, engine(Conf.ORM).take_claims_token(Conf.ORM))
        return token[1]

    @reconnect.once(using=Conf.ORM)
    def wake_pushers(self) -> None:
        """Wake the queue's idle pushers now (a stopping cluster's own among them)."""
        engine(Conf.ORM).notify(self.list_key, using=Conf.ORM)

    @reconnect.once(using=Conf.ORM)
    def delete(self, task_id: int) -> None:
        """The monitor's acknowledgement of a task the runner did not acknowledge (schedules)."""
        engine(Conf.ORM).delete_row(task_id, using=Conf.ORM)

    def lock_size(self) -> int:
        """Rows claimed and not acknowledged yet."""
        return engine(Conf.ORM).claimed_rows(self.list_key, using=Conf.ORM)

    @reconnect.once(using=Conf.ORM)
    def hand_back(self, tasks: list[dict]) -> None:
        """Make the rows of claimed tasks that never started claimable again at once.

        A stopping cluster (`queues.django_q2.cluster`) calls this for what waited in its local
        queue, so another cluster runs those jobs now, in their place in the queue, instead of
        after a rescue (or, on SQLite, the visibility timeout).
        """
        row_ids = [task["ack_id"] for task in tasks]
        engine(Conf.ORM).hand_back(self.list_key, row_ids, using=Conf.ORM)

    def _close(self) -> None:
        connections[Conf.ORM].close()
        engine(Conf.ORM).stop_waiting(Conf.ORM)
