"""Faults under load with real `qcluster` processes on PostgreSQL: nothing lost, nothing doubled.

Every scenario ends with the same proof: each requested conversation is gone, no message is left
without its conversation, every job succeeded, and each deleted its conversation exactly once
(a second completed run of the idempotent handler would record `deleted: false`).
"""

import os
import signal
import subprocess
import time

import pytest
from django.db import close_old_connections, connection

from chat import services
from chat.models import Conversation, Message
from queues.models import Job
from queues.services import enqueue
from tests.support.cluster import wait_for
from tests.support.data import orphan_message_count

pytestmark = [pytest.mark.postgres, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

# Quick redelivery, and every job record kept so the end state can be checked against all of them.
FAST_RECOVERY = {"QUEUE_REDELIVERY_GRACE": "2", "JOB_KEEP_SUCCEEDED": "1000"}


def request_deletions(owner, count, messages=3):
    conversations = Conversation.objects.bulk_create(
        Conversation(owner=owner, title=f"Doomed {n}") for n in range(count)
    )
    Message.objects.bulk_create(
        Message(conversation=c, role="user", content=f"m{i}")
        for c in conversations
        for i in range(messages)
    )
    jobs = [
        services.request_conversation_deletion(c, request_id=f"fault-{c.pk}") for c in conversations
    ]
    return [c.pk for c in conversations], [j.pk for j in jobs]


def succeeded(job_ids):
    return Job.objects.filter(pk__in=job_ids, status="succeeded").count()


def wait_all_finished(job_ids, timeout):
    wait_for(
        lambda: not Job.objects.filter(pk__in=job_ids).exclude(status__in=Job.FINISHED).exists(),
        timeout,
        interval=0.5,
        message=f"{len(job_ids)} jobs to finish",
    )


def assert_everything_deleted_exactly_once(conversation_ids, job_ids):
    assert not Conversation.objects.filter(pk__in=conversation_ids).exists()
    assert not Message.objects.filter(conversation_id__in=conversation_ids).exists()
    assert orphan_message_count() == 0
    jobs = Job.objects.filter(pk__in=job_ids)
    assert jobs.count() == len(job_ids)
    assert sorted(set(jobs.values_list("status", flat=True))) == ["succeeded"]
    assert all(result["deleted"] for result in jobs.values_list("result", flat=True))


def test_sigkill_of_a_worker_in_the_middle_of_200_deletions_loses_nothing(cluster, user):
    conversation_ids, job_ids = request_deletions(user, 200, messages=20)
    qcluster = cluster.start(workers=4, timeout=5, extra_env=FAST_RECOVERY)
    wait_for(lambda: succeeded(job_ids) >= 40, 60, message="40 deletions")
    assert succeeded(job_ids) < 200, "the kill came too late to be mid-run"
    os.kill(qcluster.worker_pids()[0], signal.SIGKILL)
    wait_all_finished(job_ids, 90)
    assert_everything_deleted_exactly_once(conversation_ids, job_ids)
    assert succeeded(job_ids) == 200


def test_postgresql_restart_in_the_middle_of_500_deletions_loses_nothing(cluster, user):
    conversation_ids, job_ids = request_deletions(user, 500)
    cluster.start(workers=4, timeout=5, extra_env=FAST_RECOVERY)
    wait_for(lambda: succeeded(job_ids) >= 100, 60, message="100 deletions")
    # One quick restart: this server is shared with everything else on the machine.
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=60,
    )
    connection.close()  # ours died with the server; the next query opens a fresh one
    wait_for(
        lambda: subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode == 0,
        30,
        message="PostgreSQL back",
    )
    close_old_connections()
    assert succeeded(job_ids) < 500, "the restart came too late to be mid-run"
    wait_all_finished(job_ids, 120)
    assert_everything_deleted_exactly_once(conversation_ids, job_ids)


def test_sigterm_of_the_whole_cluster_mid_run_then_a_restart_loses_nothing(cluster, user):
    conversation_ids, job_ids = request_deletions(user, 300, messages=10)
    first = cluster.start(workers=4, timeout=5, extra_env=FAST_RECOVERY)
    wait_for(lambda: succeeded(job_ids) >= 50, 60, message="50 deletions")
    started = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    first.process.wait(30)
    assert time.monotonic() - started < 30
    assert succeeded(job_ids) < 300, "the stop came too late to be mid-run"
    cluster.start(workers=4, timeout=5, extra_env=FAST_RECOVERY)
    wait_all_finished(job_ids, 120)
    assert_everything_deleted_exactly_once(conversation_ids, job_ids)


def test_a_hanging_handler_is_cut_off_by_the_timeout_and_retried(cluster, user):
    cluster.start(workers=2, timeout=2, extra_env=FAST_RECOVERY)
    job = enqueue("database", "test_sleep", {"user_id": user.pk, "seconds": 60})
    wait_all_finished([job.pk], 60)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 3, "JobTimeout")
    follow_up = enqueue("database", "test_sleep", {"user_id": user.pk})
    wait_all_finished([follow_up.pk], 20)
    assert succeeded([follow_up.pk]) == 1


def test_a_handler_stuck_out_of_reach_of_the_timeout_has_its_worker_replaced(cluster, user):
    qcluster = cluster.start(workers=2, timeout=2, extra_env=FAST_RECOVERY)
    workers_before = set(qcluster.worker_pids())
    job = enqueue("database", "test_stuck", {"user_id": user.pk, "seconds": 60})
    wait_all_finished([job.pk], 60)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 2, "WorkerLost")
    assert set(qcluster.worker_pids()) - workers_before, "the guard started a new worker"
    follow_up = enqueue("database", "test_sleep", {"user_id": user.pk})
    wait_all_finished([follow_up.pk], 20)
    assert succeeded([follow_up.pk]) == 1
