"""Brings back the jobs that a dead cluster, a dead worker or a lost broker row would strand.

The job record is the truth; the broker only wakes workers. Every cluster's pusher runs
`rescue(queue)` as it dequeues (`rescue_now_and_then`), at most every `QUEUE_RESCUE_INTERVAL`
seconds (one cluster at a time per queue on PostgreSQL), and the maintenance schedule once a minute:

1. broker rows claimed by a cluster that died are handed out again (`free_dead_claims`);
2. a `running` job whose worker is gone (`queues.engine.liveness`) gets a `WorkerLost` attempt and a
   retry (or fails, if that was its last attempt);
3. unless the queue is paused (its jobs wait on purpose), a waiting job is pushed again and its
   `run_after` moved to now when, on the database broker, it is due and its broker row is gone
   (at the next pass: an anti-join of the due waiting jobs against broker rows, on
   `job_live_status_idx` and the rows' primary key), or it is more than
   `QUEUE_STRANDED_AFTER` seconds past due and its row was claimed longer ago than that (lost in
   a worker killed before it began the job); on Redis, which cannot be asked, when it is more
   than `QUEUE_STRANDED_AFTER` seconds past due, so at most once per `QUEUE_STRANDED_AFTER`.
   A spare delivery does nothing: the runner tells it from the live one.
"""

import logging
import time
from datetime import timedelta

from django.db import connection, connections, transaction
from django.db.models import BooleanField, Exists, OuterRef, Q
from django.db.models.expressions import RawSQL
from django.db.models.lookups import GreaterThanOrEqual
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from queues.conf import conf
from queues.core import pausing
from queues.django_q2.push import broker_in_database, push
from queues.engine import liveness, reconnect
from queues.errors import WorkerLost
from queues.execution.runner import presumed_alive_for, record_failure
from queues.models import Job

logger = logging.getLogger("queues.rescuer")

BATCH = 1000
# First key of the lock that lets one cluster at a time rescue a queue ("rscu").
RESCUE = 0x72736375
TABLE = OrmQ._meta.db_table
# Rows claimed (`queues.django_q2.broker` re-keys them `<queue>@<token>@<claimed at>`) by a pusher
# whose claims lock nobody holds: that cluster died. The partial index of migration 0010 keeps this
# a lookup among claimed rows only.
_DEAD_CLAIM = f"""key LIKE '%%@%%' AND split_part(key, '@', 1) = %s
AND NOT {liveness.claims_lock_held_sql("split_part(key, '@', 2)::bigint")}"""
_next_rescue = {}


def rescue_due(queue):
    """Whether QUEUE_RESCUE_INTERVAL has passed since this process last rescued `queue`."""
    return time.monotonic() >= _next_rescue.get(queue, 0.0)


def rescue_now_and_then(queue, needed=True):
    """Run `rescue(queue)` if QUEUE_RESCUE_INTERVAL has passed since this process did (each
    broker's `dequeue` calls this). Returns how many rows and jobs it brought back.

    `needed=False`: the check the database broker sent with its claim (`needed_sql`) found
    nothing to do; the interval restarts.
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


def rescue(queue):
    """One rescue pass over `queue`; returns how many rows and jobs it brought back.

    On PostgreSQL one statement first asks whether there is anything to do (`needed_sql`), so a
    healthy queue costs one statement per pass instead of a transaction of five.
    """
    if liveness.supported() and not needed(queue):
        return 0
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
        cursor.execute(f"UPDATE {TABLE} SET key = %s WHERE {_DEAD_CLAIM}", [queue, queue])
        return cursor.rowcount


def dead_claims_sql(queue):
    """(SQL, params): a condition true when `free_dead_claims(queue)` would free rows."""
    return f"EXISTS (SELECT 1 FROM {TABLE} WHERE {_DEAD_CLAIM})", [queue]


def rows_on_their_way(queue, claimed_since, or_if=None):
    """Broker rows of `queue` that will still be delivered: waiting their turn, claimed since
    `claimed_since` (a row claimed longer ago for a job still waiting was lost in a worker killed
    before it began the job), or any row where the condition `or_if` holds. SQLite: every row,
    since claims expire there."""
    rows = OrmQ.objects.using(Conf.ORM)
    if not _claims_in_database():
        return rows
    recent = RawSQL(
        "NULLIF(split_part(key, '@', 3), '')::bigint >= %s",
        [int(claimed_since.timestamp())],
        BooleanField(),
    )
    on_its_way = Q(key=queue) | Q(key__startswith=f"{queue}@", recent=True)
    if or_if is not None:
        on_its_way |= Q(or_if)
    return rows.alias(recent=recent).filter(on_its_way)


def needed(queue):
    sql, params = needed_sql(queue)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {sql}", params)
        return cursor.fetchone()[0]


def needed_sql(queue):
    """(SQL, params): a condition true when `rescue(queue)` has something to do (PostgreSQL):
    a dead cluster's claim, a dead worker's attempt or, unless the queue is paused, a stranded
    job: the same queries the rescue runs. The pusher sends it with its claim
    (`queues.django_q2.broker`)."""
    dead, params = dead_claims_sql(queue)
    lost, lost_params = _lost_attempts(queue).values("pk")[:1].query.sql_with_params()
    stranded, stranded_params = (
        _stranded(queue, timezone.now()).values("pk")[:1].query.sql_with_params()
    )
    sql = f"({dead} OR EXISTS ({lost}) OR (EXISTS ({stranded}) AND NOT {pausing.paused_sql('%s')}))"
    return sql, [*params, *lost_params, *stranded_params, queue]


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
        return list(_lost_attempts(queue).order_by("started_at")[:BATCH])
    now = timezone.now()
    candidates = running.order_by("started_at")[:BATCH]
    return [
        job
        for job in candidates
        if job.started_at is None or job.started_at < now - presumed_alive_for(job)
    ]


def _lost_attempts(queue):
    """PostgreSQL: the `running` jobs of `queue` whose liveness lock nobody holds."""
    held = RawSQL(liveness.job_lock_held_sql(f'"{Job._meta.db_table}"."id"'), [], BooleanField())
    running = Job.objects.filter(queue=queue, status=Job.Status.RUNNING)
    return running.alias(held=held).filter(held=False)


def _stranded(queue, now):
    """The waiting jobs of `queue` whose delivery is lost (see the module's docstring).

    Database broker: one anti-join of the due waiting jobs against their broker rows, where any
    row of a job less than QUEUE_STRANDED_AFTER past due counts (it is waiting or being begun),
    and of a later one only a row on its way (`rows_on_their_way`)."""
    late = now - timedelta(seconds=conf.QUEUE_STRANDED_AFTER)
    due = Job.objects.filter(queue=queue, status__in=Job.WAITING, run_after__lte=now)
    if not broker_in_database():
        return due.filter(run_after__lt=late)
    not_late_yet = GreaterThanOrEqual(OuterRef("run_after"), late)
    its_row = rows_on_their_way(queue, claimed_since=late, or_if=not_late_yet)
    return due.exclude(Exists(its_row.filter(pk=OuterRef("broker_row"))))


def push_stranded(queue):
    """Push again the waiting jobs of `queue` whose delivery is lost. Returns how many."""
    now = timezone.now()
    pushed = 0
    for job in _stranded(queue, now).order_by("run_after")[:BATCH]:
        row = push(job)  # due as before: the job keeps its place among the queue's rows
        pushed += Job.objects.filter(pk=job.pk, status=job.status).update(
            run_after=now, broker_row=row
        )
    return pushed
