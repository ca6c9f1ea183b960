"""Brings back the jobs that a dead cluster, a dead worker or a lost broker row would strand.

The job record is the truth; the broker only wakes workers. Every cluster's pusher runs
`rescue(queue)` as it dequeues (`rescue_now_and_then`), at most every `QUEUE_RESCUE_INTERVAL`
seconds (one cluster at a time per queue on PostgreSQL), and the maintenance schedule once a minute:

1. broker rows claimed by a cluster that died are handed out again (`free_dead_claims`);
2. a `running` job whose worker is gone (`queues.liveness`) gets a `WorkerLost` attempt and a
   retry (or fails, if that was its last attempt);
3. unless the queue is paused (its jobs wait on purpose), a waiting job more than
   `QUEUE_STRANDED_AFTER` seconds past due whose broker row is missing
   or was claimed longer ago than that (lost in a worker killed before it began the job) on the
   database broker, or any such job on Redis (which cannot be asked), is pushed again and its
   `run_after` moved to now, so it is pushed at most once per `QUEUE_STRANDED_AFTER`. A spare
   delivery does nothing: the runner tells it from the live one.
"""

import logging
import time
from datetime import timedelta

from django.db import connection, connections, transaction
from django.db.models import BooleanField, Exists, OuterRef, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from queues import liveness, pausing
from queues.conf import conf
from queues.errors import WorkerLost
from queues.models import Job
from queues.push import broker_in_database, push
from queues.runner import presumed_alive_for, record_failure

logger = logging.getLogger("queues.rescuer")

BATCH = 1000
# First key of the lock that lets one cluster at a time rescue a queue ("rscu").
RESCUE = 0x72736375
TABLE = OrmQ._meta.db_table
# Rows claimed (`queues.broker` re-keys them `<queue>@<token>@<claimed at>`) by a pusher whose
# claims lock nobody holds: that cluster died. The partial index of migration 0010 keeps this a
# lookup among claimed rows only.
_FREE_DEAD_CLAIMS = f"""
UPDATE {TABLE} SET key = %(key)s
WHERE key LIKE '%%@%%' AND split_part(key, '@', 1) = %(key)s
AND NOT {liveness.claims_lock_held_sql("split_part(key, '@', 2)::bigint")}
"""
_next_rescue = {}


def rescue_now_and_then(queue):
    """Run `rescue(queue)` if QUEUE_RESCUE_INTERVAL has passed since this process did (each
    broker's `dequeue` calls this)."""
    due = _next_rescue.get(queue, 0.0)
    if time.monotonic() < due:
        return
    _next_rescue[queue] = time.monotonic() + conf.QUEUE_RESCUE_INTERVAL
    try:
        rescue(queue)
    except Exception:
        logger.exception("Rescue of queue %s failed; trying again later", queue)


def rescue(queue):
    """One rescue pass over `queue`; returns how many rows and jobs it brought back."""
    with transaction.atomic():
        if liveness.supported() and not _take_rescue_lock(queue):
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


def _claims_in_database():
    """Whether broker rows carry their claim in their key (PostgreSQL); on SQLite django-q2's
    visibility timeout hands claimed rows out again by itself."""
    return connections[Conf.ORM].vendor == "postgresql"


def free_dead_claims(queue):
    """Hand out again, now, the rows of `queue` claimed by clusters that died. Returns how many."""
    if not _claims_in_database():
        return 0
    with connections[Conf.ORM].cursor() as cursor:
        cursor.execute(_FREE_DEAD_CLAIMS, {"key": queue})
        return cursor.rowcount


def rows_on_their_way(queue, claimed_since):
    """Broker rows of `queue` that will still be delivered: waiting their turn, or claimed since
    `claimed_since` (a row claimed longer ago for a job still waiting was lost in a worker killed
    before it began the job). SQLite: every row, since claims expire there."""
    rows = OrmQ.objects.using(Conf.ORM)
    if not _claims_in_database():
        return rows
    recent = RawSQL(
        "NULLIF(split_part(key, '@', 3), '')::bigint >= %s",
        [int(claimed_since.timestamp())],
        BooleanField(),
    )
    return rows.alias(recent=recent).filter(
        Q(key=queue) | Q(key__startswith=f"{queue}@", recent=True)
    )


def _take_rescue_lock(queue):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s::int4, hashtext(%s))", [RESCUE, queue])
        return cursor.fetchone()[0]


def lost_worker(job):
    return WorkerLost(f"worker {job.worker or '?'} died during attempt {job.attempts}")


def lost_attempts(queue):
    """`running` jobs of `queue` whose worker is provably gone (SQLite: presumed gone)."""
    running = Job.objects.filter(queue=queue, status=Job.Status.RUNNING)
    if liveness.supported():
        held = RawSQL(
            liveness.job_lock_held_sql(f'"{Job._meta.db_table}"."id"'), [], BooleanField()
        )
        running = running.alias(held=held).filter(held=False)
        return list(running.order_by("started_at")[:BATCH])
    now = timezone.now()
    candidates = running.order_by("started_at")[:BATCH]
    return [
        job
        for job in candidates
        if job.started_at is None or job.started_at < now - presumed_alive_for(job)
    ]


def push_stranded(queue):
    """Push again the waiting jobs of `queue` whose delivery is lost. Returns how many."""
    now = timezone.now()
    late = now - timedelta(seconds=conf.QUEUE_STRANDED_AFTER)
    stranded = Job.objects.filter(queue=queue, status__in=Job.WAITING, run_after__lt=late)
    if broker_in_database():
        on_its_way = rows_on_their_way(queue, claimed_since=late).filter(pk=OuterRef("broker_row"))
        stranded = stranded.exclude(Exists(on_its_way))
    pushed = 0
    for job in stranded.order_by("run_after")[:BATCH]:
        job.run_after = now
        pushed += Job.objects.filter(pk=job.pk, status=job.status).update(
            run_after=now, broker_row=push(job)
        )
    return pushed
