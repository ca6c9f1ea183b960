"""Brings back the jobs that a dead cluster, a dead worker or a lost broker row would strand.

The job record is the truth; the broker only wakes workers. Every cluster's pusher runs
`rescue(queue)` as it dequeues (`rescue_now_and_then`), at most every `QUEUE_RESCUE_INTERVAL`
seconds (one cluster at a time per queue where the engine can lock it), and the maintenance
schedule once a minute:

1. broker rows claimed by a cluster that died are handed out again (`free_dead_claims`);
2. a `running` job whose worker is gone (`queues.engine.liveness`) gets a `WorkerLost` attempt and a
   retry (or fails, if that was its last attempt);
3. unless the queue is paused (its jobs wait on purpose), a waiting job is pushed again and its
   `run_after` moved to now when, on the database broker, it is due and its broker row is gone
   (at the next pass, once it is among its queue's `STRANDED_HORIZON` longest-due waiting jobs:
   a bounded look, the same cost over any backlog), or it is more than
   `QUEUE_STRANDED_AFTER` seconds past due and its row was claimed longer ago than that (lost in
   a worker killed before it began the job); on Redis, which cannot be asked, when it is more
   than `QUEUE_STRANDED_AFTER` seconds past due, so at most once per `QUEUE_STRANDED_AFTER`.
   A spare delivery does nothing: the runner tells it from the live one.
"""

import logging
import time
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone
from django_q.conf import Conf

from queues.conf import conf
from queues.core import pausing
from queues.engine import engine, reconnect
from queues.errors import WorkerLost
from queues.execution.runner import record_failure
from queues.models import Job

logger = logging.getLogger("queues.rescuer")

BATCH = 1000
_next_rescue: dict[str, float] = {}


def rescue_due(queue: str) -> bool:
    """Whether QUEUE_RESCUE_INTERVAL has passed since this process last rescued `queue`."""
    return time.monotonic() >= _next_rescue.get(queue, 0.0)


def rescue_now_and_then(queue: str, needed: bool = True) -> int:
    """Run `rescue(queue)` if QUEUE_RESCUE_INTERVAL has passed since this process did (each
    broker's `dequeue` calls this). Returns how many rows and jobs it brought back.

    `needed=False`: the check the database broker sent with its claim found nothing to do; the
    interval restarts.
    """
    if not rescue_due(queue):
        return 0
    _next_rescue[queue] = time.monotonic() + conf.QUEUE_RESCUE_INTERVAL
    if not needed:
        return 0
    try:
        return rescue(queue)
    except Exception:
        logger.exception("Rescue of queue %s failed; trying again later", queue)
        reconnect.drop_if_lost()  # so this process's next statement gets a fresh connection
        return 0


def rescue(queue: str) -> int:
    """One rescue pass over `queue`; returns how many rows and jobs it brought back.

    One statement first asks whether there is anything to do (`Engine.rescue_needed`), so a
    healthy queue costs one statement per pass instead of a transaction of five.
    """
    now = timezone.now()
    if not engine().rescue_needed(queue, now, stranded_before(now)):
        return 0
    with transaction.atomic():
        if not engine().take_rescue_lock(queue):
            return 0  # another cluster is at it right now
        freed = free_dead_claims(queue)
        lost = sum(
            record_failure(job, lost_worker(job), own_attempt=False) for job in lost_attempts(queue)
        )
        pushed = 0 if pausing.is_paused(queue) else push_stranded(queue)
    if freed or lost or pushed:
        logger.warning(
            "rescued queue %s: %d claim(s) of dead clusters, %d attempt(s) of dead workers, "
            "%d stranded job(s) pushed again",
            queue,
            freed,
            lost,
            pushed,
        )
    return freed + lost + pushed


def stranded_before(now: datetime) -> datetime:
    """A waiting job due before this, whose row was claimed before it, lost its delivery."""
    return now - timedelta(seconds=conf.QUEUE_STRANDED_AFTER)


def free_dead_claims(queue: str) -> int:
    """Hand out again, now, the rows of `queue` claimed by clusters that died. Returns how many."""
    return engine(Conf.ORM).free_dead_claims(queue, using=Conf.ORM)


def lost_worker(job: Job) -> WorkerLost:
    return WorkerLost(f"worker {job.worker or '?'} died during attempt {job.attempts}")


def lost_attempts(queue: str) -> list[Job]:
    """`running` jobs of `queue` whose worker is provably gone (SQLite: presumed gone)."""
    return engine().lost_attempts(queue, BATCH)


def push_stranded(queue: str) -> int:
    """Push again the waiting jobs of `queue` whose delivery is lost. Returns how many."""
    now = timezone.now()
    pushed = 0
    for job in engine().stranded_jobs(queue, now, stranded_before(now), BATCH):
        row = engine().push(job)  # due as before: the job keeps its place among the queue's rows
        pushed += Job.objects.filter(pk=job.pk, status=job.status).update(
            run_after=now, broker_row=row
        )
    return pushed
