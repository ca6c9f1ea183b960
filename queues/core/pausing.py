"""Pausing a queue: no cluster, on any host, starts a job of a paused queue; running ones finish.

The state is a `QueuePause` row, so every process of every host reads the same thing, and each
change is recorded (`QueueEvent`, who and when). Honoured in two places:

- the claim: the database broker's claim takes no row of a paused queue (on PostgreSQL one
  primary-key lookup in the claim statement, on SQLite a look before each poll); Redis pushers
  look before each poll (`wait_if_paused`), so within their poll interval;
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
from queues.engine import engine
from queues.models import QueueEvent, QueuePause

# How long a Redis pusher sleeps between two looks at a paused queue (seconds).
POLL = 0.5


class UnknownQueue(ValueError):
    pass


def is_paused(queue):
    return QueuePause.objects.filter(queue=queue).exists()


def paused_queues():
    """{queue: its QueuePause} of every paused queue."""
    return {pause.queue: pause for pause in QueuePause.objects.select_related("paused_by")}


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
        engine().notify(queue)  # idle pushers wake at commit
    return bool(deleted)


def wait_if_paused(queue):
    """For pushers that poll (Redis): True, after a short sleep, if `queue` is paused."""
    if not is_paused(queue):
        return False
    time.sleep(POLL)
    return True


def _check(queue):
    if queue not in conf.QUEUES:
        raise UnknownQueue(f"unknown queue {queue!r}; queues: {', '.join(conf.QUEUES)}")
