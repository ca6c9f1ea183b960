"""Recovery at the edges, with real `qcluster` processes on PostgreSQL and default timings.

Duplicated broker rows must not look like dead workers; a dead cluster's or worker's jobs run
again within seconds (not after QUEUE_TIMEOUT + QUEUE_REDELIVERY_GRACE); a job whose broker row
is gone is pushed again; a timeout stops the statement that runs over it.
"""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from chat import services
from chat.models import Message
from queues.api import enqueue
from queues.models import Job
from tests.support.cluster import KEEP_ALL_JOBS, database_session, wait_for
from tests.support.data import (
    assert_everything_deleted_exactly_once,
    big_conversation,
    request_deletions,
)
from tests.support.jobs import succeeded, wait_for_job, wait_for_jobs
from tests.support.redis_queue import ON_REDIS

pytestmark = [pytest.mark.postgres, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def copy_broker_rows(copies):
    """Every broker row `copies` times over, as at-least-once delivery may hand them out."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_q_ormq (key, payload, lock) "
            "SELECT key, payload, lock FROM django_q_ormq, generate_series(2, %s)",
            [copies],
        )


def job_ids_of_claimed_rows():
    """Job ids in broker rows claimed by some pusher (key `<queue>@<token>`)."""
    rows = OrmQ.objects.filter(key__contains="@").values_list("payload", flat=True)
    return {SignedPackage.loads(payload)["args"][0] for payload in rows}


@pytest.mark.parametrize("copies, count", [(3, 40), (6, 100)], ids=["tripled", "6-copies"])
def test_duplicated_broker_rows_never_look_like_dead_workers(cluster, user, copies, count):
    conversation_ids, job_ids = request_deletions(user, count)
    copy_broker_rows(copies)
    assert OrmQ.objects.count() == copies * count
    qcluster = cluster.start(workers=4, extra_env=KEEP_ALL_JOBS)
    wait_for_jobs(job_ids, timeout=120, interval=0.5)
    assert_everything_deleted_exactly_once(conversation_ids, job_ids)
    jobs = Job.objects.filter(pk__in=job_ids)
    assert set(jobs.values_list("attempts", flat=True)) == {1}
    assert not jobs.exclude(last_error_class="").exists(), "no WorkerLost, no failure"
    wait_for(lambda: not OrmQ.objects.exists(), 30, message="every copy acknowledged")
    assert "already deleted" not in qcluster.log, "a handler ran twice to completion"


def test_a_sigkilled_cluster_s_claimed_jobs_run_within_15s_of_a_new_cluster(cluster, user):
    jobs = [enqueue("test_sleep", {"user_id": user.pk, "seconds": 1}) for _ in range(12)]
    job_ids = [j.pk for j in jobs]
    first = cluster.start(workers=3, extra_env=KEEP_ALL_JOBS)
    wait_for(
        lambda: (
            len(job_ids_of_claimed_rows()) == 12
            and Job.objects.filter(status="running").count() == 3
        ),
        30,
        message="every job claimed, three of them running",
    )
    first.kill()
    running = set(map(str, Job.objects.filter(status="running").values_list("pk", flat=True)))
    assert succeeded(job_ids) == 0 and len(running) == 3

    cluster.start(workers=3, extra_env=KEEP_ALL_JOBS)
    started = time.monotonic()
    wait_for_jobs(job_ids, timeout=15, interval=0.5)
    # Not QUEUE_TIMEOUT + QUEUE_REDELIVERY_GRACE (40 s here) as with visibility timeouts.
    assert time.monotonic() - started < 15
    assert succeeded(job_ids) == 12
    jobs = Job.objects.filter(pk__in=job_ids)
    assert set(jobs.filter(pk__in=running).values_list("last_error_class", flat=True)) == {
        "WorkerLost"
    }
    assert set(jobs.exclude(pk__in=running).values_list("attempts", flat=True)) == {1}


def test_a_worker_sigkilled_mid_job_is_recorded_lost_and_retried_promptly(cluster, user):
    cluster.start(workers=2, extra_env=KEEP_ALL_JOBS)
    job = enqueue("test_sleep", {"user_id": user.pk, "seconds": 3})
    running = wait_for_job(job.pk, until="running", timeout=30)
    os.kill(int(running.worker.rsplit(":", 1)[1]), signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: Job.objects.filter(pk=job.pk, attempts=2).exists(),
        15,
        interval=0.2,
        message="the second attempt",
    )
    # Rescue interval (5 s) plus the first retry's backoff (2 s), not timeout + grace (40 s).
    assert time.monotonic() - killed < 10
    wait_for_job(job.pk, timeout=30)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("succeeded", 2, "WorkerLost")


def test_a_long_job_of_a_live_worker_is_never_rescued(cluster, user):
    """Two clusters rescuing every second, no visibility timeout to speak of: one attempt."""
    eager = {**KEEP_ALL_JOBS, "QUEUE_RESCUE_INTERVAL": "1", "QUEUE_REDELIVERY_GRACE": "0"}
    cluster.start(workers=2, timeout=10, extra_env=eager)
    cluster.start(workers=2, timeout=10, extra_env=eager)
    job = enqueue("test_sleep", {"user_id": user.pk, "seconds": 8})
    wait_for_job(job.pk, timeout=30)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("succeeded", 1, "")


def test_waiting_jobs_whose_broker_rows_were_deleted_run_within_10s_and_once(cluster, user):
    """Default settings: rows deleted (e.g. in django-q2's "Queued tasks" admin) before a cluster
    starts, and on a running cluster, of jobs not due yet; each runs within 10 s of its due time."""
    conversation_ids, job_ids = request_deletions(user, 20)
    OrmQ.objects.all().delete()
    qcluster = cluster.start(workers=2, extra_env=KEEP_ALL_JOBS)
    started = time.monotonic()
    wait_for_jobs(job_ids, timeout=10 - (time.monotonic() - started), interval=0.2)
    assert_everything_deleted_exactly_once(conversation_ids, job_ids)

    due_at = timezone.now() + timedelta(seconds=2)
    later = [enqueue("test_sleep", {"user_id": user.pk}, run_after=due_at).pk for _ in range(10)]
    OrmQ.objects.filter(pk__in=Job.objects.filter(pk__in=later).values("broker_row")).delete()
    assert not OrmQ.objects.exists()
    wait_for_jobs(later, timeout=12, interval=0.2)
    jobs = Job.objects.filter(pk__in=later)
    assert set(jobs.values_list("status", "attempts")) == {("succeeded", 1)}
    latest = max(jobs.values_list("started_at", flat=True))
    assert (latest - due_at).total_seconds() < 10
    assert "rescued queue database" in qcluster.log


def test_a_timeout_cancels_a_huge_deletion_and_holds_no_locks(cluster, user):
    conversation = big_conversation(user, 200_000, title="Huge")
    # A reader holding one message makes sure the DELETE is still running at the timeout,
    # however fast this machine deletes.
    blocker = database_session()
    blocker.execute(
        "SELECT id FROM chat_message WHERE conversation_id = %s LIMIT 1 FOR SHARE",
        [conversation.pk],
    )
    cluster.start(workers=2, timeout=2, extra_env=KEEP_ALL_JOBS)
    job_id = services.request_conversation_deletion(conversation, request_id="huge").pk
    attempt = wait_for(
        lambda: Job.objects.filter(pk=job_id, last_error_class="JobTimeout").first(),
        30,
        interval=0.1,
        message="the timeout recorded",
    )
    assert (attempt.status, attempt.attempts) == ("retrying", 1)
    # Recorded within timeout + 5 s of the attempt's start (modified_at is not kept: the retry's
    # due time is recorded-at plus the 2 s backoff).
    recorded_at = attempt.run_after.timestamp() - 2
    assert recorded_at - attempt.started_at.timestamp() < 2 + 5
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname IN ('chat_message', 'chat_conversation') AND l.pid <> %s "
            "AND l.pid <> pg_backend_pid()",
            [blocker.info.backend_pid],
        )
        assert cursor.fetchone()[0] == 0, "the cancelled DELETE holds no locks"
    blocker.rollback()
    blocker.close()
    wait_for_job(job_id, timeout=60)
    assert (Job.objects.get(pk=job_id).status, Message.objects.count()) == ("succeeded", 0)


def test_on_redis_a_sigkilled_cluster_s_jobs_run_again_within_60s(redis_queue, cluster, user):
    """Redis forgets the tasks a dead cluster had popped; the rescuer pushes them again."""
    jobs = [enqueue("test_sleep", {"user_id": user.pk, "seconds": 1}) for _ in range(12)]
    job_ids = [j.pk for j in jobs]
    first = cluster.start(workers=3, extra_env={**KEEP_ALL_JOBS, **ON_REDIS})
    wait_for(
        lambda: Job.objects.filter(status="running").count() == 3,
        30,
        message="three jobs running",
    )
    first.kill()
    killed = time.monotonic()
    assert succeeded(job_ids) == 0 and redis_queue.queue_size() < 12, "tasks lost with it"

    cluster.start(workers=3, extra_env={**KEEP_ALL_JOBS, **ON_REDIS})
    wait_for_jobs(job_ids, timeout=75, interval=0.5)
    assert time.monotonic() - killed < 60
    assert succeeded(job_ids) == 12
