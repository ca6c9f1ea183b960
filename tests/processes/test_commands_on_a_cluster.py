"""Commands on real clusters, as an operator types them: `qinfo`, `qmonitor` and `qmemory` show
them; `jobs` enqueues, stops and retries the jobs they run."""

import json

import pytest

from chat.models import Conversation
from queues.api import enqueue
from queues.conf import conf
from queues.core import pausing
from queues.django_q2.heartbeats import live_clusters
from queues.models import Job
from tests.support.cluster import manage, wait_for
from tests.support.jobs import wait_for_job
from tests.support.redis_queue import ON_REDIS

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def shown(*args, extra_env=None):
    done = manage(*args, extra_env=extra_env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_qinfo_and_qmonitor_show_each_live_cluster_its_workers_and_the_backlog(cluster, user):
    running = cluster.start(workers=2)
    wait_for(lambda: live_clusters().exists(), 30, message="a heartbeat")
    pausing.pause("database", detail="test")
    for _ in range(3):
        enqueue("test_sleep", {"user_id": user.pk})

    snapshot = json.loads(shown("qinfo", "--json"))
    (seen,) = snapshot["clusters"]
    assert (seen["queue"], seen["pid"], seen["status"]) == ("database", running.process.pid, "Idle")
    # The sentinel's children: its workers, its pusher and its monitor.
    children = {*seen["workers"], seen["pusher"], seen["monitor"]}
    assert children == set(running.worker_pids()) and len(seen["workers"]) == 2
    (queue,) = snapshot["queues"]
    assert queue["queue"] == "database" and queue["live_clusters"] == 1
    assert (queue["paused"], queue["waiting"], queue["running"]) == (True, 3, 0)

    text = shown("qinfo")
    lines = text.splitlines()
    assert lines[0].startswith("Clusters seen in the last 30 s (1)")
    assert lines[1].split()[:3] == ["queue", "host", "pid"]
    assert lines[2].split()[:5] == ["database", seen["host"], str(running.process.pid), "Idle", "2"]
    queue_row = lines[lines.index("Queues") + 2].split()
    options = conf.QUEUES["database"]  # the settings' (the cluster was started with 2 workers)
    workers, timeout = str(options["workers"]), str(options["timeout"])
    assert queue_row[:7] == ["database", "1", workers, timeout, "paused", "3", "0"]
    monitor = shown("qmonitor", "--run-once")
    # The same view (the times aside: uptime, last seen).
    assert [row.split()[:5] for row in monitor.splitlines()[1:]] == [
        row.split()[:5] for row in lines[1:]
    ]
    ids = shown("qinfo", "--ids").split()
    assert ids[:3] == ["database", seen["host"], str(running.process.pid)]
    assert "Q_STAT" in shown("qinfo", "--config")  # django-q2's settings, as before

    running.stop()
    pausing.resume("database", detail="test")
    wait_for(lambda: not live_clusters().exists(), 30, message="the stop's heartbeat")
    after = shown("qinfo")
    assert "(0)" in after.splitlines()[0] and "none: start one with manage.py qcluster" in after
    queue_row = after.splitlines()[after.splitlines().index("Queues") + 2].split()
    assert queue_row[4:6] == ["no", "cluster"]  # the queue's state: its 3 jobs wait for one


def test_qinfo_shows_a_cluster_on_redis_too(redis_queue, cluster):
    running = cluster.start(workers=2, timeout=5, extra_env=ON_REDIS)
    wait_for(lambda: live_clusters().exists(), 30, message="a heartbeat")
    snapshot = json.loads(shown("qinfo", "--json", extra_env=ON_REDIS))
    (seen,) = snapshot["clusters"]
    assert (seen["pid"], len(seen["workers"])) == (running.process.pid, 2)
    assert snapshot["queues"][0]["live_clusters"] == 1


def test_qmemory_shows_this_hosts_cluster_processes(cluster):
    running = cluster.start(workers=2)
    wait_for(lambda: live_clusters().exists(), 30, message="a heartbeat")
    rows = [line.split() for line in shown("qmemory", "--run-once", "--workers").splitlines()]
    (total,) = [row for row in rows if row[:1] == ["database"]]
    assert total[1:3] == [str(running.process.pid), "cluster"] and float(total[3]) > 10
    workers = {int(row[0]): float(row[3]) for row in rows if row[1:2] == ["worker"]}
    assert set(workers) < set(running.worker_pids()) and len(workers) == 2
    assert all(mb > 10 for mb in workers.values())


@pytest.mark.postgres  # a stop asked of a running job, as in test_operator_controls_cluster
def test_jobs_enqueues_stops_and_retries_what_a_cluster_runs(cluster, user, operator_user):
    cluster.start(workers=2)
    data = json.dumps({"user_id": user.pk, "seconds": 30})
    stoppable = json.loads(shown("jobs", "enqueue", "test_stoppable", "--data", data, "--json"))
    wait_for_job(stoppable["id"], until="running", timeout=30)
    listed = json.loads(shown("jobs", "list", "--status", "running", "--json"))
    assert [job["id"] for job in listed] == [stoppable["id"]]

    said = shown("jobs", "cancel", stoppable["id"], "--by", operator_user.username)
    assert said == "0 cancelled, 1 asked to stop\n"
    job = wait_for_job(stoppable["id"], timeout=10)
    assert (job.status, job.cancel_requested_by) == ("cancelled", operator_user)
    assert not Conversation.objects.filter(title="written by test_stoppable").exists()
    assert list(job.events.values_list("action", "by")) == [
        ("cancel_requested", operator_user.pk),
        ("stopped", operator_user.pk),
    ]

    data = json.dumps({"user_id": user.pk})
    failing = shown("jobs", "enqueue", "test_fails_once", "--data", data).split()[0]
    assert wait_for_job(failing, timeout=30).status == "failed"
    assert shown("jobs", "retry", "--status", "failed", "--by", operator_user.username) == (
        "1 retried\n"
    )
    assert wait_for_job(failing, timeout=30).status == "succeeded"
    assert Job.objects.get(pk=failing).events.get().by == operator_user
