"""Acknowledging a delivery in the job's own transaction, so the monitor's costs nothing.

django-q2's monitor deletes a finished task's broker row after the worker is done: one more
statement per job, and a window where the outcome is recorded but the row is not gone yet (or the
other way round). Instead the runner deletes the row in the transaction that records the job's
outcome (`delivery_to_acknowledge()`), learning its id from django-q2's `pre_execute` signal; its
`post_execute_in_worker` signal then drops `ack_id` from the task so the monitor deletes nothing,
and marks it `acknowledged_by_runner`: our worker loop (`queues.django_q2.worker`) hands such a task
to the monitor only if the monitor still has work for it.
A worker that dies rolls the delete back with everything else, and the row is delivered again.

Only for a broker that declares `acknowledged_with_outcome` (`queues.django_q2.broker.JobBroker`):
Redis acknowledges by handing a task out once.
"""

from django.db import transaction
from django.utils.module_loading import import_string
from django_q.conf import Conf
from django_q.signals import post_execute_in_worker, pre_execute

# The broker row this worker process is running, and whether the runner already deleted it.
_delivery = {"ack_id": None, "acknowledged": False}


def delivery_to_acknowledge() -> int | None:
    """The broker row of the running delivery, for the engine to delete with the job's outcome so
    both commit together; None outside a JobBroker worker (tests, a cluster on another broker).
    Once that commits, the monitor skips its own DELETE.
    """
    ack_id = _delivery["ack_id"]
    if ack_id is not None:
        transaction.on_commit(lambda: _delivery.update(acknowledged=True), using=Conf.ORM)
    return ack_id


def connect_signals():
    pre_execute.connect(
        _remember_delivery, dispatch_uid="queues.django_q2.acknowledgement.remember"
    )
    post_execute_in_worker.connect(
        _skip_acknowledged, dispatch_uid="queues.django_q2.acknowledgement.skip_acknowledged"
    )


def _remember_delivery(sender, task, **kwargs):
    broker_class = import_string(Conf.BROKER_CLASS) if Conf.BROKER_CLASS else None
    ours = getattr(broker_class, "acknowledged_with_outcome", False)
    _delivery.update(ack_id=task.get("ack_id") if ours else None, acknowledged=False)


def _skip_acknowledged(sender, task, **kwargs):
    if _delivery["acknowledged"]:
        task.pop("ack_id", None)  # the monitor acknowledges only tasks that carry one
        task["acknowledged_by_runner"] = True
    _delivery.update(ack_id=None, acknowledged=False)
