"""Faults under load with real `qcluster` processes on PostgreSQL: nothing lost, nothing doubled.

Every scenario ends with the same proof: each requested conversation is gone, no message is left
without its conversation, every job succeeded, and each deleted its conversation exactly once
(a second completed run of the idempotent handler would record `deleted: false`).
"""

import os
import signal
import time

import pytest
from django.db import connection

from queues.api import enqueue
from tests.support.cluster import FAST_RECOVERY, KEEP_ALL_JOBS, wait_for
from tests.support.data import assert_everything_deleted_exactly_once, request_deletions
from tests.support.jobs import succeeded, wait_for_job, wait_for_jobs

pytestmark = [pytest.mark.postgres, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def test_sigkill_of_a_worker_in_the_middle_of_200_deletions_loses_nothing(cluster, user):
    conversation_ids, job_ids = request_deletions(user, 200, messages=20)
    qcluster = cluster.start(workers=4, timeout=5, extra_env=FAST_RECOVERY | KEEP_ALL_JOBS)
    wait_for(lambda: succeeded(job_ids) >= 40, 60, message="40 deletions")
    assert succeeded(job_ids) < 200, "the kill came too late to be mid-run"
    os.kill(qcluster.worker_pids()[0], signal.SIGKILL)
    wait_for_jobs(job_ids, timeout=90, interval=0.5)
    assert_everything_deleted_exactly_once(conversation_ids, job_ids)
    assert succeeded(job_ids) == 200


def test_postgresql_restart_in_the_middle_of_500_deletions_loses_nothing(
    on_throwaway_server, cluster, user
):
    conversation_ids, job_ids = request_deletions(user, 500)
    cluster.start(workers=4, timeout=5, extra_env=FAST_RECOVERY | KEEP_ALL_JOBS)
    wait_for(lambda: succeeded(job_ids) >= 100, 60, message="100 deletions")
    on_throwaway_server.restart()
    connection.close()  # ours died with the server; the next query opens a fresh one
    assert succeeded(job_ids) < 500, "the restart came too late to be mid-run"
    wait_for_jobs(job_ids, timeout=120, interval=0.5)
    assert_everything_deleted_exactly_once(conversation_ids, job_ids)


def test_every_worker_connection_terminated_mid_run_loses_nothing(cluster, user):
    conversation_ids, job_ids = request_deletions(user, 300)
    cluster.start(workers=4, timeout=5, extra_env=FAST_RECOVERY | KEEP_ALL_JOBS)
    wait_for(lambda: succeeded(job_ids) >= 60, 60, message="60 deletions")
    with connection.cursor() as cursor:  # the test database's sessions only, but ours
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchone()[0] >= 4
    assert succeeded(job_ids) < 300, "the fault came too late to be mid-run"
    wait_for_jobs(job_ids, timeout=120, interval=0.5)
    assert_everything_deleted_exactly_once(conversation_ids, job_ids)


def test_sigterm_of_the_whole_cluster_mid_run_then_a_restart_loses_nothing(cluster, user):
    conversation_ids, job_ids = request_deletions(user, 300, messages=10)
    first = cluster.start(workers=4, timeout=5, extra_env=FAST_RECOVERY | KEEP_ALL_JOBS)
    wait_for(lambda: succeeded(job_ids) >= 50, 60, message="50 deletions")
    started = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    first.process.wait(30)
    assert time.monotonic() - started < 30
    assert succeeded(job_ids) < 300, "the stop came too late to be mid-run"
    cluster.start(workers=4, timeout=5, extra_env=FAST_RECOVERY | KEEP_ALL_JOBS)
    wait_for_jobs(job_ids, timeout=120, interval=0.5)
    assert_everything_deleted_exactly_once(conversation_ids, job_ids)


def test_a_hanging_handler_is_cut_off_by_the_timeout_and_retried(cluster, user):
    cluster.start(workers=2, timeout=2, extra_env=FAST_RECOVERY | KEEP_ALL_JOBS)
    job = enqueue("test_sleep", {"user_id": user.pk, "seconds": 60})
    wait_for_job(job.pk, timeout=60)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 3, "JobTimeout")
    follow_up = enqueue("test_sleep", {"user_id": user.pk})
    wait_for_job(follow_up.pk, timeout=20)
    assert succeeded([follow_up.pk]) == 1


def test_a_handler_stuck_out_of_reach_of_the_timeout_has_its_worker_replaced(cluster, user):
    qcluster = cluster.start(workers=2, timeout=2, extra_env=FAST_RECOVERY | KEEP_ALL_JOBS)
    workers_before = set(qcluster.worker_pids())
    job = enqueue("test_stuck", {"user_id": user.pk, "seconds": 60})
    wait_for_job(job.pk, timeout=60)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 2, "WorkerLost")
    assert set(qcluster.worker_pids()) - workers_before, "the guard started a new worker"
    follow_up = enqueue("test_sleep", {"user_id": user.pk})
    wait_for_job(follow_up.pk, timeout=20)
    assert succeeded([follow_up.pk]) == 1
