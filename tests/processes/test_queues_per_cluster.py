"""One real `qcluster` serving two queues (`database` and `emails`, tests.support.two_queues),
each with its own workers: concurrency counted in running jobs, pausing per queue, a stop of the
whole process group, and the command line's choice of queues and workers.

Concurrency is counted on PostgreSQL: on SQLite one job's write transaction holds the others'
(README, "SQLite and PostgreSQL")."""

import importlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from django.db.models import Count
from django_q.brokers import get_broker

from queues.api import enqueue
from queues.core import pausing
from queues.django_q2.heartbeats import clusters_serving
from queues.models import Job
from tests.support.cluster import ROOT, wait_for
from tests.support.cluster import test_database_url as database_url
from tests.support.redis_queue import ON_REDIS
from tests.support.two_queues import EMAILS

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

TWO_QUEUES = {"DJANGO_SETTINGS_MODULE": "tests.support.two_queues"}


@pytest.fixture
def two_queues(settings):
    """This process knows the `emails` queue and its job type, as the cluster does."""
    settings.QUEUES = {**settings.QUEUES, "emails": EMAILS}
    importlib.import_module("tests.support.emails_jobs")  # registers once per process


def enqueue_sleepers(user, count, seconds):
    database = [
        enqueue("test_sleep", {"user_id": user.pk, "seconds": seconds}) for _ in range(count)
    ]
    emails = [
        enqueue("test_email_sleep", {"user_id": user.pk, "seconds": seconds}) for _ in range(count)
    ]
    return database, emails


def running_samples(until, timeout=60):
    """Samples of {queue: jobs running} taken until `until()` holds."""
    samples = []
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; most running at once: {most(samples)}"
        running = Job.objects.filter(status="running").values_list("queue").annotate(n=Count("pk"))
        samples.append(dict(running))
        time.sleep(0.02)
    return samples


def most(samples):
    """{queue: the most of its jobs seen running at once}."""
    return {q: max(s.get(q, 0) for s in samples) for q in {q for s in samples for q in s}}


def both_busy():
    """Both queues' two workers each running a job."""
    running = Job.objects.filter(status="running").values_list("queue").annotate(n=Count("pk"))
    return dict(running) == {"database": 2, "emails": 2}


def all_succeeded(jobs):
    ids = [job.pk for job in jobs]
    return lambda: Job.objects.filter(pk__in=ids, status="succeeded").count() == len(ids)


@pytest.mark.postgres
def test_one_cluster_runs_both_queues_each_with_its_own_workers(cluster, user, two_queues):
    database, emails = enqueue_sleepers(user, 8, seconds=0.8)
    qcluster = cluster.start(workers=3, extra_env=TWO_QUEUES)

    samples = running_samples(all_succeeded(database + emails))

    # database: QUEUE_WORKERS (3); emails: its QUEUES entry (2); and both at once: neither
    # queue waits for the other's workers.
    assert most(samples) == {"database": 3, "emails": 2}
    assert {"database": 3, "emails": 2} in samples
    assert "ready: database (3 workers), emails (2 workers)" in qcluster.log


@pytest.mark.postgres
def test_the_command_line_chooses_the_queues_and_their_workers(cluster, user, two_queues):
    database, emails = enqueue_sleepers(user, 6, seconds=0.8)
    qcluster = cluster.start(workers=3, extra_env=TWO_QUEUES, args=["--queues", "emails=3"])

    samples = running_samples(all_succeeded(emails))

    assert most(samples) == {"emails": 3}
    assert "ready: emails (3 workers)." in qcluster.log
    assert Job.objects.filter(pk__in=[j.pk for j in database], status="queued").count() == 6

    qcluster.stop()
    cluster.start(workers=3, extra_env=TWO_QUEUES, args=["--name", "database"])
    wait_for(all_succeeded(database), 60, message="the database jobs")


def test_pausing_one_queue_leaves_the_other_running(cluster, user, two_queues):
    qcluster = cluster.start(workers=3, extra_env=TWO_QUEUES)

    # Its heartbeats say which queues it serves, with how many workers (dashboard, /metrics).
    def served():
        return [
            (c["pid"], q["queue"], q["workers"]) for c in clusters_serving() for q in c["queues"]
        ]

    pid = qcluster.process.pid
    expected = [(pid, "database", 3), (pid, "emails", 2)]
    wait_for(lambda: served() == expected, 10, message=lambda: f"heartbeats {served()}")

    pausing.pause("emails")
    database, emails = enqueue_sleepers(user, 4, seconds=0)

    wait_for(all_succeeded(database), 60, message="the database jobs")
    time.sleep(1)  # emails had time to start, had it not been paused
    assert Job.objects.filter(pk__in=[j.pk for j in emails], status="queued").count() == 4

    pausing.resume("emails")
    wait_for(all_succeeded(emails), 60, message="the emails jobs after the resume")


@pytest.mark.postgres
def test_sigterm_to_the_group_stops_both_queues_and_loses_nothing(cluster, user, two_queues):
    database, emails = enqueue_sleepers(user, 8, seconds=2)
    qcluster = cluster.start(workers=2, timeout=5, extra_env=TWO_QUEUES)

    wait_for(both_busy, 30, message="both queues' workers busy")
    qcluster.signal_group(signal.SIGTERM)
    qcluster.process.wait(20)
    assert qcluster.process.returncode == 0, qcluster.log
    wait_for(lambda: not qcluster.group_alive(), 5, message="every cluster process gone")

    jobs = Job.objects.filter(pk__in=[j.pk for j in database + emails])
    # The in-flight jobs of both queues finished; nothing is left running or half-claimed.
    for queue in ("database", "emails"):
        assert jobs.filter(queue=queue, status="succeeded").count() >= 2, qcluster.log
    assert not jobs.filter(status="running").exists()
    handed_back = re.findall(r"Handed (\d+) claimed jobs back to the queue", qcluster.log)
    assert handed_back, qcluster.log

    cluster.start(workers=2, timeout=5, extra_env=TWO_QUEUES)
    wait_for(all_succeeded(database + emails), 60, message="all 16 jobs after a restart")
    assert not jobs.exclude(attempts=1).exists()  # no attempt lost or run twice


@pytest.mark.postgres
def test_a_sigkilled_cluster_s_jobs_of_both_queues_run_on_a_new_cluster(cluster, user, two_queues):
    database, emails = enqueue_sleepers(user, 6, seconds=1)
    first = cluster.start(workers=2, extra_env=TWO_QUEUES)
    wait_for(both_busy, 30, message="both queues' workers busy")
    first.kill()
    running = list(Job.objects.filter(status="running").values_list("pk", flat=True))

    cluster.start(workers=2, extra_env=TWO_QUEUES)
    wait_for(all_succeeded(database + emails), 30, message="all 12 jobs on the new cluster")
    jobs = Job.objects.filter(pk__in=[j.pk for j in database + emails])
    lost = jobs.filter(pk__in=running)
    assert set(lost.values_list("last_error_class", flat=True)) == {"WorkerLost"}
    assert set(lost.values_list("queue", flat=True)) == {"database", "emails"}
    assert set(jobs.exclude(pk__in=running).values_list("attempts", flat=True)) == {1}


@pytest.mark.postgres
def test_on_redis_one_cluster_runs_both_queues(redis_queue, cluster, user, two_queues):
    emails_list = get_broker("emails")
    emails_list.delete_queue()
    try:
        database, emails = enqueue_sleepers(user, 3, seconds=0)
        cluster.start(workers=2, extra_env={**TWO_QUEUES, **ON_REDIS})
        wait_for(all_succeeded(database + emails), 30, message="both queues' jobs on Redis")
        assert redis_queue.queue_size() == emails_list.queue_size() == 0
    finally:
        emails_list.delete_queue()


def test_a_dead_sentinel_stops_the_cluster_with_an_error(cluster, two_queues):
    qcluster = cluster.start(workers=2, extra_env=TWO_QUEUES)
    sentinels = qcluster.sentinel_pids()
    assert len(sentinels) == 2
    os.kill(sentinels[-1], signal.SIGKILL)  # as the out-of-memory killer would
    qcluster.process.wait(20)
    # Exit status 1, so the service manager restarts it, rather than half a cluster running on.
    assert qcluster.process.returncode == 1, qcluster.log
    assert "exited with code -9; stopping the cluster" in qcluster.log
    assert "A queue's sentinel died; the cluster stopped" in qcluster.log
    # Its pusher, monitor and workers died with it: nothing of the cluster is left.
    wait_for(lambda: not qcluster.group_alive(), 5, message="every cluster process gone")


def run_qcluster(*args):
    """`manage.py qcluster *args` to its end, on the test database."""
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_Q_LOG_LEVEL": "INFO"}
    return subprocess.run(
        [sys.executable, "manage.py", "qcluster", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_once_starts_every_queue_named_then_stops(two_queues):
    result = run_qcluster(
        "--run-once", "--settings", "tests.support.two_queues", "--name", "emails"
    )
    assert result.returncode == 0, result.stderr
    assert "ready: emails (2 workers)." in result.stderr
    assert "has stopped." in result.stderr


def test_a_bad_queues_flag_is_a_clear_error(two_queues):
    result = run_qcluster("--settings", "tests.support.two_queues", "--queues", "database=0,emails")
    assert result.returncode == 1
    assert "CommandError: --queues: workers of queue 'database' must be a number above 0" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
