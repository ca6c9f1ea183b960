"""Cluster heartbeats in the database, whichever broker carries the jobs.

django-q2 reports a cluster's status through its broker every guard cycle (0.5 s): stock, into the
Django cache (per process by default) or into Redis. Our brokers keep it in `ClusterHeartbeat`
instead, so every web process on any host (`/readyz`, the dashboard, `/api/queues/stats`,
`/metrics`) sees every cluster, on the database broker and on Redis alike.

A `qcluster` serving several queues writes one row per queue (each queue's sentinel reports its
own status), all with the pid of its main process: `clusters_serving` groups them back.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING

from django.utils import timezone
from django_q.conf import Conf
from django_q.signing import BadSignature, SignedPackage

from queues.engine import engine, reconnect
from queues.models import ClusterHeartbeat

if TYPE_CHECKING:
    from django_q.status import Stat

# How often a running cluster refreshes its heartbeat row, and how old one may be to count.
HEARTBEAT = 10.0
LIVE_WITHIN = timedelta(seconds=30)
_written = {}


class DatabaseHeartbeats:
    """Broker mixin: django-q2's cluster status calls, answered from `ClusterHeartbeat`."""

    @property
    def queue_name(self):
        """The queue this broker serves, as operators name it (`database`)."""
        return self.list_key

    # Written at most every HEARTBEAT seconds, or on a status change, to keep an idle cluster
    # quiet. Called by the sentinel every guard cycle (0.5 s), which is also when it notices a
    # connection the server closed, so the heartbeat and the scheduler that share it reconnect
    # before their next statement.
    def set_stat(self, key, value, timeout):
        reconnect.drop_if_hung_up()
        stat = SignedPackage.loads(value)
        last = _written.get(key)
        if last and last[1] == stat.status and time.monotonic() - last[0] < HEARTBEAT:
            return
        self._write_stat(key, stat, value)

    @reconnect.once
    def _write_stat(self, key: str, stat: Stat, value: str) -> None:
        beat = ClusterHeartbeat(
            key=key,
            queue=self.queue_name,
            host=stat.host,
            pid=stat.pid,
            status=stat.status,
            payload=value,
            seen_at=timezone.now(),
        )
        # One statement (an upsert): an idle cluster's statements are mostly these.
        engine().write_heartbeat(beat)
        _written[key] = (time.monotonic(), stat.status)

    def get_stat(self, key):
        beat = live_clusters().filter(key=key).first()
        return beat.payload if beat else None

    def get_stats(self, pattern):
        return list(live_clusters().values_list("payload", flat=True))


def live_clusters():
    """Heartbeats of clusters seen recently and not stopped."""
    return ClusterHeartbeat.objects.filter(seen_at__gte=timezone.now() - LIVE_WITHIN).exclude(
        status=Conf.STOPPED
    )


def clusters_serving() -> list[dict]:
    """Live `qcluster` processes, by host and pid, each with the queues it serves:
    `{"host", "pid", "seen_at", "queues": [{"queue", "workers", "status"}]}`."""
    clusters: dict[tuple[str, int], dict] = {}
    for beat in live_clusters().order_by("host", "pid", "queue"):
        cluster = clusters.setdefault(
            (beat.host, beat.pid),
            {"host": beat.host, "pid": beat.pid, "seen_at": beat.seen_at, "queues": []},
        )
        cluster["seen_at"] = max(cluster["seen_at"], beat.seen_at)
        cluster["queues"].append(
            {"queue": beat.queue, "workers": workers_of(beat), "status": beat.status}
        )
    return list(clusters.values())


def workers_of(beat: ClusterHeartbeat) -> int | None:
    """The worker processes of the sentinel that wrote `beat` (None if its payload is not
    readable here: signed with another SECRET_KEY)."""
    try:
        return len(SignedPackage.loads(beat.payload).workers)
    except (BadSignature, AttributeError):
        return None
