"""Our worker loop (queues/django_q2/worker.py) in a real `qcluster`: a runner job is finished in
the worker, everything else still goes through django-q2's monitor, and the guard's protocol
holds."""

import re

import pytest
from django_q.models import OrmQ
from django_q.tasks import async_task

from queues.api import enqueue
from tests.support.cluster import FAST_RECOVERY, KEEP_ALL_JOBS, wait_for
from tests.support.jobs import wait_for_job, wait_for_jobs

pytestmark = [pytest.mark.postgres, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def test_a_runner_job_is_recorded_and_acknowledged_with_nothing_left_for_the_monitor(cluster, user):
    qcluster = cluster.start(workers=1)
    job = enqueue("test_sleep", {"user_id": user.pk})
    assert wait_for_job(job.pk).status == "succeeded"
    # A plain task after it, run by the same worker: once the monitor logged this one, it would
    # have logged the job too.
    async_task("math.floor", 2.5)
    wait_for(lambda: "Processed 'math.floor'" in qcluster.log, 20, message="the plain task")
    assert not OrmQ.objects.exists(), "both deliveries acknowledged"
    assert "job succeeded" in qcluster.log  # the runner's own line
    assert "run_job" not in qcluster.log, "django-q2 logged the runner's job"


def test_a_plain_task_is_acknowledged_by_the_monitor(cluster):
    """What django-q2's scheduler enqueues: a function of its own, not a job of our runner."""
    qcluster = cluster.start(workers=2)
    async_task("math.floor", 2.5)

    wait_for(lambda: "Processed 'math.floor'" in qcluster.log, 20, message="the plain task")
    wait_for(lambda: not OrmQ.objects.exists(), 5, message="the monitor's acknowledgement")
    assert re.search(r"processing \S+ 'math.floor'", qcluster.log)


def test_a_plain_task_out_of_time_has_its_worker_replaced_and_its_failure_reported(cluster):
    """django-q2's own timeout (the runner's cuts a job off earlier): the worker reports the
    failure to the monitor, tells the guard it timed out, and the guard starts another."""
    qcluster = cluster.start(workers=1, timeout=1, extra_env=FAST_RECOVERY)
    processes = set(qcluster.worker_pids())
    async_task("time.sleep", 30)

    wait_for(lambda: "after timeout" in qcluster.log, 20, message="the guard's replacement")
    assert "Failed 'time.sleep'" in qcluster.log
    assert "Task exceeded maximum timeout value" in qcluster.log
    assert set(qcluster.worker_pids()) - processes, "the guard started a new worker"


def test_workers_are_recycled_after_their_task_count_and_lose_no_job(cluster, user):
    qcluster = cluster.start(
        workers=1,
        extra_env=KEEP_ALL_JOBS | {"DJANGO_SETTINGS_MODULE": "tests.support.recycling_settings"},
    )
    jobs = [enqueue("test_sleep", {"user_id": user.pk}) for _ in range(5)]

    assert {job.status for job in wait_for_jobs([job.pk for job in jobs])} == {"succeeded"}
    wait_for(lambda: qcluster.log.count("recycled worker") >= 2, 10, message="two recycles")
    assert not OrmQ.objects.exists()
