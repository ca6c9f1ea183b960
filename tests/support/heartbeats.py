"""Heartbeat rows as a running `qcluster`'s sentinels write them (`queues.django_q2.heartbeats`),
without a cluster: one per queue it serves, with the main process's pid."""

import uuid
from datetime import timedelta

from django.utils import timezone
from django_q.signing import SignedPackage
from django_q.status import Status

from queues.models import ClusterHeartbeat


def heartbeat(queue, pid, workers, *, host="worker-1", status="Idle", age=0):
    """The heartbeat of a sentinel of `queue` with `workers` worker processes, `age` s old."""
    stat = Status(pid=pid, cluster_id=uuid.uuid4())
    stat.workers = list(range(workers))
    return ClusterHeartbeat.objects.create(
        key=f"django_q:database:cluster:{stat.cluster_id}",
        queue=queue,
        host=host,
        pid=pid,
        status=status,
        payload=SignedPackage.dumps(stat, True),
        seen_at=timezone.now() - timedelta(seconds=age),
    )
