"""The broker of our queues: django-q2's ORM broker plus delayed visibility.

django-q2 has no delayed enqueue: its broker row's `lock` column is a visibility timeout (a row is
handed out once `lock` is in the past). We store a retry's broker row with `lock` set to the time
it may run, so a waiting retry lives in the database, survives any restart, and no worker sleeps.
Plugged in through `Q_CLUSTER["broker_class"]`, so it stays django-q2's cluster, admin and
`qcluster`.
"""

import uuid

from django.db import transaction
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.signing import SignedPackage

RUNNER = "queues.runner.run_job"


class JobBroker(ORM):
    def enqueue(self, task, run_after=None):
        row = self.get_connection().create(
            key=self.list_key or Conf.CLUSTER_NAME, payload=task, lock=run_after or timezone.now()
        )
        return row.pk


def push(job):
    """Store a broker row that makes a worker of `job.queue` run `job` at `job.run_after`.

    The row carries only the job's id: the data stays in the job record, so scrubbing a job's
    content never has to decode signed pickles.
    """
    from django_q.brokers import get_broker

    package = {
        "id": uuid.uuid4().hex,
        "name": f"{job.job_type}:{job.id}",
        "func": RUNNER,
        "args": (str(job.id),),
        "kwargs": {},
        "started": timezone.now(),
        "cluster": job.queue,
    }
    broker = get_broker(job.queue)
    payload = SignedPackage.dumps(package)
    # A broker outside the database (Redis) gets the row only once the job record is committed.
    if not getattr(broker, "joins_transactions", True):
        transaction.on_commit(lambda: broker.enqueue(payload, run_after=job.run_after))
        return None
    return broker.enqueue(payload, run_after=job.run_after)
