"""Pushing a job: the broker row that makes a worker of the job's queue run it.

The row carries only the job's id (`queues.execution.runner.run_job` runs it from its record),
signed as django-q2 expects.
On the database broker it is inserted in the caller's transaction with a `NOTIFY` that PostgreSQL
delivers at commit (`queues.django_q2.broker` listens); its `lock` column is the time it may run, so
a waiting retry is a row in the database. A broker outside the database (Redis) gets the row only
once the job record commits; if that push fails (Redis unreachable), the job stays stored and
accepted, the failure is logged and counted (`slimy_job_push_failures_total`), and the rescuer
pushes the job again once Redis answers (`queues.maintenance.rescuer`).
"""

import logging

from django.db import connections, transaction
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ

from queues.core import registry
from queues.django_q2.payload import payload as _payload
from queues.engine import counters
from queues.engine.postgresql import CHANNEL

logger = logging.getLogger("queues.push")

INSERT = f"""
INSERT INTO {OrmQ._meta.db_table} (key, payload, lock, priority) VALUES (%s, %s, %s, %s)
RETURNING id, pg_notify('{CHANNEL}', key)
"""

# SQLite: no NOTIFY, pushers poll.
INSERT_POLLED = (
    f"INSERT INTO {OrmQ._meta.db_table} (key, payload, lock, priority) VALUES (%s, %s, %s, %s)"
)


def insert_row(queue, payload, run_after, priority=0):
    """Insert a broker row of `queue` due at `run_after`; its id. PostgreSQL wakes pushers."""
    db = connections[Conf.ORM]
    with db.cursor() as cursor:
        if db.vendor != "postgresql":
            lock = db.ops.adapt_datetimefield_value(run_after)
            cursor.execute(INSERT_POLLED, [queue, payload, lock, priority])
            return cursor.lastrowid
        # The NOTIFY also wakes pushers for a delayed row, so they wait for its due time.
        cursor.execute(INSERT, [queue, payload, run_after, priority])
        return cursor.fetchone()[0]


def broker_in_database():
    """Whether the configured broker keeps its rows in our database (and joins transactions)."""
    broker_class = import_string(Conf.BROKER_CLASS) if Conf.BROKER_CLASS else ORM
    return getattr(broker_class, "joins_transactions", True)


def push(job):
    """Store a broker row that makes a worker of `job.queue` run `job` at `job.run_after`.

    The row carries only the job's id: the data stays in the job record, so scrubbing a job's
    content never has to decode signed pickles. Returns the row's id (None outside the database).
    """
    broker = get_broker(job.queue)
    if not getattr(broker, "joins_transactions", True):
        # A broker outside the database (Redis) gets the row only once the job record commits.
        payload = _payload(job)
        transaction.on_commit(lambda: push_committed(broker, job, payload))
        return None
    return insert_row(job.queue, _payload(job), job.run_after, _priority(job))


def push_committed(broker, job, payload):
    """Hand a committed job's row to a broker outside the database. A failure must not undo what
    committed (the caller already has its job id): it is logged and counted, and the job waits
    for the rescuer, which pushes it again from its record."""
    try:
        broker.enqueue(payload, run_after=job.run_after)
    except Exception:
        logger.exception(
            "Could not push job %s to the broker of queue %s; it is stored and will be pushed "
            "again by the rescuer once the broker answers",
            job.pk,
            job.queue,
        )
        try:
            counters.push_failed(job)
        except Exception:
            logger.exception("Could not count the failed push of job %s", job.pk)


def push_statement(job):
    """As `push`, as (sql, params, name) for the caller to send as a CTE `name` of its own
    statement (`queues.engine.statements`), whose RETURNING gives the row's id; PostgreSQL only.

    None on SQLite and when the queue's broker is outside the database: then `push` the job.
    """
    if connections[Conf.ORM].vendor != "postgresql" or not broker_in_database():
        return None
    return INSERT, [job.queue, _payload(job), job.run_after, _priority(job)], "broker_row"


def push_many_statement(jobs, stored):
    """As `push_statement`, for those of `jobs` that the CTE `stored` returns (its `id` and
    `broker_row`, the id each job's row takes): the batch and unique enqueue, where a duplicate
    gets no row. PostgreSQL, database broker only."""
    rows = ", ".join(["(%s::uuid, %s, %s, %s::timestamptz, %s::smallint)"] * len(jobs))
    sql = (
        f"INSERT INTO {OrmQ._meta.db_table} (id, key, payload, lock, priority)"
        " SELECT s.broker_row, p.key, p.payload, p.lock, p.priority"
        f" FROM {stored} s JOIN (VALUES {rows}) p(job_id, key, payload, lock, priority)"
        f" ON p.job_id = s.id RETURNING pg_notify('{CHANNEL}', key)"
    )
    params = [
        v for job in jobs for v in (job.pk, job.queue, _payload(job), job.run_after, _priority(job))
    ]
    return sql, params


def next_row_id_sql():
    """SQL taking the id of a broker row to be inserted later in the same statement."""
    return f"nextval(pg_get_serial_sequence('{OrmQ._meta.db_table}', 'id'))"


def _priority(job):
    """The broker row's claim rank (lower first): `JobType.broker_rank`."""
    kind = registry.find(job.job_type)
    return kind.broker_rank(job) if kind is not None else 2 * job.priority
