"""Stopping a real `qcluster` the way process managers do (queues/django_q2/cluster.py).

systemd's default `KillMode=control-group` sends the stop signal to every process of the
service, and `kill -- -PGID` to the whole process group: these tests signal the group (the
cluster runs in its own session), and the main process alone for comparison.
"""

import re
import signal
import time

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from queues.api import enqueue
from queues.models import Job
from tests.support.cluster import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

TIMEOUT = 5  # the queue's timeout in these tests: a busy stop may take it plus 10 s


def stop_with(qcluster, signals, *, whole_group=True, gap=0.3):
    """Send `signals` (gap seconds apart); return how long until the whole group is gone."""
    started = time.monotonic()
    for sig in signals:
        if whole_group:
            qcluster.signal_group(sig)
        else:
            qcluster.process.send_signal(sig)
        time.sleep(gap)
    qcluster.process.wait(TIMEOUT + 20)
    wait_for(lambda: not qcluster.group_alive(), 5, message="every cluster process gone")
    return time.monotonic() - started


def sleepers(user, count, seconds):
    return [enqueue("test_sleep", {"user_id": user.pk, "seconds": seconds}) for _ in range(count)]


@pytest.mark.parametrize("whole_group", [True, False], ids=["group", "main-pid"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_an_idle_cluster_stops_within_10s(cluster, sig, whole_group):
    qcluster = cluster.start(workers=2, timeout=TIMEOUT)
    time.sleep(1)  # the pusher is waiting on LISTEN
    assert stop_with(qcluster, [sig], whole_group=whole_group) < 10
    assert "stopping cluster processes" in qcluster.log


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM,), (signal.SIGINT,), (signal.SIGTERM, signal.SIGTERM, signal.SIGINT)],
    ids=["sigterm", "sigint", "sigterm-twice-then-sigint"],
)
def test_a_busy_cluster_finishes_its_jobs_hands_back_the_rest_and_stops(cluster, user, signals):
    sleepers(user, 8, seconds=3)  # 2 run, up to 4 more wait claimed in the cluster
    qcluster = cluster.start(workers=2, timeout=TIMEOUT)

    def claimed_beyond_the_running():
        running = Job.objects.filter(status="running").count()
        claimed = OrmQ.objects.exclude(key="database").count()  # a claim renames the key
        return running == 2 and claimed > running

    wait_for(claimed_beyond_the_running, 30, message="2 running and more claimed")

    assert stop_with(qcluster, signals) < TIMEOUT + 10
    finished = Job.objects.filter(status="succeeded")
    assert finished.count() >= 2, "the in-flight jobs finished"
    # What was claimed but not started is due again at once, not after the visibility timeout.
    handed_back = re.search(r"Handed (\d+) claimed jobs back to the queue", qcluster.log)
    assert handed_back and int(handed_back[1]) >= 1, qcluster.log
    waiting = Job.objects.filter(status="queued").count()
    assert finished.count() + waiting == 8
    assert OrmQ.objects.count() == waiting
    assert not OrmQ.objects.filter(lock__gt=timezone.now()).exists()

    cluster.start(workers=2, timeout=TIMEOUT)
    wait_for(lambda: Job.objects.filter(status="succeeded").count() == 8, 60, message="8 jobs")
    # No attempt was lost or counted twice.
    assert not Job.objects.exclude(attempts=1).exists()


def test_a_worker_stuck_out_of_reach_of_the_timeout_does_not_hold_up_the_stop(cluster, user):
    job = enqueue("test_stuck", {"user_id": user.pk, "seconds": 120})
    qcluster = cluster.start(workers=2, timeout=TIMEOUT)
    wait_for(lambda: Job.objects.filter(status="running").exists(), 30, message="the stuck job")
    assert stop_with(qcluster, [signal.SIGTERM, signal.SIGTERM]) < TIMEOUT + 10
    assert "did not stop in time; killing it" in qcluster.log
    job.refresh_from_db()
    assert job.status == "running"  # its worker was killed: delivered again like any crash's
