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

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.signing import SignedPackage

from queues.core import registry
from queues.engine import counters, engine

if TYPE_CHECKING:
    from queues.models import Job

logger = logging.getLogger("queues.push")

# The channel a broker row's NOTIFY goes to; the database broker LISTENs on it.
CHANNEL = "django_q_ormq"


def wake_pushers(queue):
    """Wake every idle pusher of `queue` on the database broker now (in the caller's
    transaction: at its commit), instead of at the end of its wait. Nothing elsewhere."""
    if connections[Conf.ORM].vendor == "postgresql":
        with connections[Conf.ORM].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, queue])


def broker_in_database():
    """Whether the configured broker keeps its rows in our database (and joins transactions)."""
    broker_class = import_string(Conf.BROKER_CLASS) if Conf.BROKER_CLASS else ORM
    return getattr(broker_class, "joins_transactions", True)


def push(job: Job) -> int | None:
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
    # Our database broker, also under a cluster running django-q2's stock broker (the
    # benchmark's reference), whose `enqueue` knows no `run_after`.
    return engine(Conf.ORM).store_broker_row(
        job.queue, _payload(job), job.run_after, _priority(job), using=Conf.ORM
    )


def push_committed(broker: Any, job: Job, payload: str) -> None:
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


def _priority(job: Job) -> int:
    """The broker row's claim rank (lower first): `JobType.broker_rank`."""
    kind = registry.find(job.job_type)
    return kind.broker_rank(job) if kind is not None else 2 * job.priority


def _payload(job):
    # The runner itself, pickled by reference: django-q2's worker then skips `pydoc.locate`.
    from queues.execution.runner import run_job  # the runner pushes through this module

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
