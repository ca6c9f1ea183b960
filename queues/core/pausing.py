"""Pausing a queue: no cluster, on any host, starts a job of a paused queue; running ones finish.

The state is a `QueuePause` row, so every process of every host reads the same thing, and each
change is recorded (`QueueEvent`, who and when). Honoured in two places:

- the claim: on PostgreSQL the broker's claim statement takes no row of a paused queue (one
  primary-key lookup in the same statement); SQLite and Redis pushers look before each poll
  (`wait_if_paused`), so within their poll interval;
- the start: the runner does not begin a job of a paused queue (the same lookup in its begin
  statement) and gives it a new broker row instead, so the jobs a cluster had claimed before the
  pause wait too, and nothing is lost.

Resuming sends the broker's NOTIFY in its transaction, so idle PostgreSQL pushers wake at commit.
While a queue is paused its waiting jobs are not a backlog: `/readyz`, the metrics, the rescuer
and the sweeper leave them alone.
"""

import time

from django.db import transaction

from queues.conf import conf
from queues.django_q2.push import wake_pushers
from queues.models import QueueEvent, QueuePause

# How long a SQLite or Redis pusher sleeps between two looks at a paused queue (seconds).
POLL = 0.5


class UnknownQueue(ValueError):
    pass


def is_paused(queue):
    return QueuePause.objects.filter(queue=queue).exists()


def paused_queues():
    """{queue: its QueuePause} of every paused queue."""
    return {pause.queue: pause for pause in QueuePause.objects.select_related("paused_by")}


def paused_sql(queue_sql):
    """SQL that is true while the queue `queue_sql` is paused (a primary-key lookup)."""
    return f"EXISTS (SELECT 1 FROM {QueuePause._meta.db_table} WHERE queue = {queue_sql})"


@transaction.atomic
def pause(queue, *, by=None, detail=""):
    """Pause `queue`; True if it was running. Recorded with `by` (a user) or `detail`."""
    _check(queue)
    _, created = QueuePause.objects.get_or_create(queue=queue, defaults={"paused_by": by})
    if created:
        QueueEvent.objects.create(queue=queue, action="paused", by=by, detail=detail)
    return created


@transaction.atomic
def resume(queue, *, by=None, detail=""):
    """Resume `queue`; True if it was paused. Idle pushers wake when this commits."""
    _check(queue)
    deleted, _ = QueuePause.objects.filter(queue=queue).delete()
    if deleted:
        QueueEvent.objects.create(queue=queue, action="resumed", by=by, detail=detail)
        wake_pushers(queue)
    return bool(deleted)


def wait_if_paused(queue):
    """For pushers that poll (SQLite, Redis): True, after a short sleep, if `queue` is paused."""
    if not is_paused(queue):
        return False
    time.sleep(POLL)
    return True


def _check(queue):
    if queue not in conf.QUEUES:
        raise UnknownQueue(f"unknown queue {queue!r}; queues: {', '.join(conf.QUEUES)}")
