"""Per-enqueue options, snooze and progress on a real `manage.py qcluster` (PostgreSQL, SQLite)."""

import pytest
from django.db import connection

from queues.api import enqueue
from queues.models import JobEvent
from tests.support.clients import token_client
from tests.support.cluster import wait_for
from tests.support.jobs import wait_for_job
from tests.support.redis_queue import ON_REDIS

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def test_a_per_enqueue_timeout_snooze_and_progress_on_a_real_cluster(cluster, user):
    # One job at a time: SQLite's writers take turns, so concurrent jobs would wait on each other.
    running = cluster.start(workers=2, timeout=10)
    api = token_client(user)

    # Five steps of 0.6 s, reporting after each.
    steps = enqueue("test_progress", {"user_id": user.pk, "steps": 5, "seconds": 0.6})
    seen = []

    def progress_shown():
        shown = api.get(f"/api/queues/jobs/{steps.pk}").json()
        if shown["progress"] is not None:
            seen.append((shown["status"], shown["progress"], shown["progress_message"]))
        return shown["status"] == "succeeded"

    wait_for(progress_shown, 30, interval=0.1, message="the progress job")
    assert seen[-1] == ("succeeded", 100.0, "step 5 of 5")
    if connection.vendor == "postgresql":  # SQLite has one writer: shown once the attempt ends
        assert ("running", 40.0, "step 2 of 5") in seen, seen

    # Not ready for 2 s after its enqueue: snoozes 0.5 s at a time, no attempt spent.
    snoozing = enqueue(
        "test_snoozing", {"user_id": user.pk, "ready_after": 2, "snooze_seconds": 0.5}
    )
    snoozing = wait_for_job(snoozing.pk, timeout=30)
    assert (snoozing.status, snoozing.attempts, snoozing.result) == (
        "succeeded",
        1,
        {"attempt": 1},
    )
    assert (snoozing.finished_at - snoozing.created_at).total_seconds() >= 2, running.log
    snoozes = JobEvent.objects.filter(job_id=snoozing.pk, action="snoozed").count()
    assert snoozes >= 2, running.log  # 2 s of readiness at 0.5 s a snooze: about 4
    history = api.get(f"/api/queues/jobs/{snoozing.pk}").json()["history"]
    assert [event["action"] for event in history] == ["snoozed"] * snoozes

    # The queue gives 10 s; this job 1 s, once.
    timed = enqueue("test_sleep", {"user_id": user.pk, "seconds": 6}, timeout=1, max_attempts=1)
    timed = wait_for_job(timed.pk, timeout=30)
    assert (timed.status, timed.attempts, timed.last_error_class) == ("failed", 1, "JobTimeout")
    assert timed.last_error == "job exceeded its timeout of 1s"
    assert (timed.finished_at - timed.started_at).total_seconds() < 6  # not the queue's 10 s


@pytest.mark.postgres
def test_a_snoozed_job_waits_in_redis_and_runs_again(redis_queue, cluster, user):
    cluster.start(workers=2, timeout=5, extra_env=ON_REDIS)
    job = enqueue("test_snoozing", {"user_id": user.pk, "ready_after": 1.5, "snooze_seconds": 0.5})

    final = wait_for_job(job.pk, timeout=30)

    assert (final.status, final.attempts, final.result) == ("succeeded", 1, {"attempt": 1})
    assert JobEvent.objects.filter(job_id=job.pk, action="snoozed").count() >= 2
