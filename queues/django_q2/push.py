"""Handing a job's broker row to a broker outside the database (Redis), once its record commits.

The row carries only the job's id (`queues.django_q2.payload`). On the database broker the engine
stores the row in the caller's transaction (`Engine.push`); Redis cannot join that transaction, so
it gets the row after the commit. If that fails (Redis unreachable), the job stays stored and
accepted, the failure is logged and counted (`slimy_job_push_failures_total`), and the rescuer
pushes the job again once Redis answers (`queues.maintenance.rescuer`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django_q.brokers import get_broker

from queues.django_q2.payload import payload

if TYPE_CHECKING:
    from queues.models import Job

logger = logging.getLogger("queues.push")


def hand_over_after_commit(job: Job) -> None:
    """Push `job`'s row to its queue's broker outside the database once the caller commits."""
    broker = get_broker(job.queue)
    task = payload(job)
    transaction.on_commit(lambda: push_committed(broker, job, task))


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
            from queues.engine.counters import push_failed  # the failure path only

            push_failed(job)
        except Exception:
            logger.exception("Could not count the failed push of job %s", job.pk)
