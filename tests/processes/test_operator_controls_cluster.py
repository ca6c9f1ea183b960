"""Cancel, stop and pause with real `qcluster` processes (PostgreSQL, and SQLite where marked):
nothing lost, nothing run twice, no false failure; a paused queue honoured by every cluster
within a second.

`-s` prints the measured latencies."""

import time

import pytest
from django.db import connection
from django.utils import timezone

from chat import jobs, services
from chat.models import Conversation, Message
from queues.api import enqueue
from queues.core import pausing
from queues.execution.cancellation import cancel_jobs
from queues.models import Job
from tests.support.cluster import KEEP_ALL_JOBS as KEEP_ALL
from tests.support.cluster import database_session, wait_for
from tests.support.data import big_conversation
from tests.support.redis_queue import ON_REDIS

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def statuses(job_ids):
    return dict(Job.objects.filter(pk__in=job_ids).values_list("pk", "status"))


@pytest.mark.postgres
def test_two_clusters_start_nothing_within_a_second_of_a_pause_and_lose_nothing(cluster, user):
    for _ in range(2):
        cluster.start(workers=2, extra_env=KEEP_ALL)
    job_ids = [enqueue("test_sleep", {"user_id": user.pk, "seconds": 0.2}).pk for _ in range(80)]
    wait_for(
        lambda: Job.objects.filter(pk__in=job_ids, status="succeeded").count() >= 8,
        60,
        message="the clusters to be busy",
    )

    pausing.pause("database")
    paused_at = timezone.now()
    time.sleep(3)

    started = Job.objects.filter(pk__in=job_ids, started_at__isnull=False)
    last_start = max(started.values_list("started_at", flat=True))
    print(f"\nlast job start after the pause: {(last_start - paused_at).total_seconds():+.3f} s")
    assert last_start <= paused_at + timezone.timedelta(seconds=1)
    waiting = Job.objects.filter(pk__in=job_ids, status="queued")
    assert waiting.count() >= 40 and not waiting.exclude(attempts=0).exists()
    assert not Job.objects.filter(pk__in=job_ids, status="running").exists()  # they finished
    # Cancelled while paused: their broker rows remain, and are skipped after the resume.
    cancelled = list(waiting.order_by("created_at").values_list("pk", flat=True)[:5])
    assert cancel_jobs(Job.objects.filter(pk__in=cancelled)) == (5, 0)

    pausing.resume("database")
    resumed_at = timezone.now()
    first_start = wait_for(
        lambda: (
            Job.objects.filter(pk__in=job_ids, started_at__gt=resumed_at)
            .order_by("started_at")
            .values_list("started_at", flat=True)
            .first()
        ),
        5,
        interval=0.01,
        message="a job to start after the resume",
    )
    print(f"first job start after the resume: {(first_start - resumed_at).total_seconds():.3f} s")
    assert first_start <= resumed_at + timezone.timedelta(seconds=1)

    wait_for(
        lambda: not Job.objects.filter(pk__in=job_ids).exclude(status__in=Job.FINISHED).exists(),
        60,
        message="every job to finish",
    )
    time.sleep(2)  # any spare delivery (the cancelled jobs' rows) has been handed out by now
    jobs = Job.objects.filter(pk__in=job_ids)
    assert jobs.filter(status="succeeded").count() == 75
    assert set(jobs.filter(status="cancelled").values_list("pk", flat=True)) == set(cancelled)
    assert not jobs.filter(status="succeeded").exclude(attempts=1).exists()  # none run twice
    assert not jobs.filter(status="cancelled").exclude(attempts=0).exists()  # never run


@pytest.mark.postgres
def test_a_running_job_stops_at_its_next_check_one_that_ignores_it_finishes(
    cluster, user, operator_api, operator_user
):
    cluster.start(workers=2)
    stoppable = enqueue("test_stoppable", {"user_id": user.pk, "seconds": 30})
    ignoring = enqueue("test_sleep", {"user_id": user.pk, "seconds": 3})
    wait_for(
        lambda: (
            Job.objects.filter(pk__in=[stoppable.pk, ignoring.pk], status="running").count() == 2
        ),
        30,
        message="both jobs to run",
    )

    asked_at = timezone.now()
    for job in (stoppable, ignoring):
        assert operator_api.post(f"/api/queues/jobs/{job.pk}/cancel").status_code == 202

    wait_for(lambda: statuses([stoppable.pk])[stoppable.pk] == "cancelled", 5, interval=0.01)
    stoppable.refresh_from_db()
    print(
        f"\nstop request to cancelled: {(stoppable.finished_at - asked_at).total_seconds():.3f} s"
    )
    assert stoppable.finished_at - asked_at < timezone.timedelta(seconds=1)
    assert stoppable.attempts == 1 and stoppable.cancel_requested_by == operator_user
    assert not Conversation.objects.filter(title="written by test_stoppable").exists()
    assert list(stoppable.events.values_list("action", "by")) == [
        ("cancel_requested", operator_user.pk),
        ("stopped", operator_user.pk),
    ]
    wait_for(lambda: statuses([ignoring.pk])[ignoring.pk] == "succeeded", 10)
    assert Job.objects.get(pk=ignoring.pk).attempts == 1


BIG = jobs.CHECK_STOP_AFTER_MESSAGES + 4000  # deleted with a stop check after


@pytest.mark.postgres
def test_a_deletion_asked_to_stop_while_it_runs_is_rolled_back_whole(cluster, user, operator_user):
    conversation = big_conversation(user, BIG)
    job = services.request_conversation_deletion(conversation, request_id="stop-mid-way")
    # The test holds a message's row from before the deletion starts, so the deletion is certain
    # to be mid-way, waiting on it, when the stop is asked.
    with database_session() as holder:
        holder.execute(
            f"SELECT id FROM {Message._meta.db_table} WHERE conversation_id = %s"
            " ORDER BY id DESC LIMIT 1 FOR UPDATE",
            [conversation.pk],
        )
        cluster.start(workers=1)
        wait_for(lambda: sessions_waiting_on_a_lock() == 1, 30, message="the deletion waiting")
        assert statuses([job.pk])[job.pk] == "running"
        cancel_jobs(Job.objects.filter(pk=job.pk), by=operator_user)
        holder.rollback()

    wait_for(lambda: statuses([job.pk])[job.pk] in Job.FINISHED, 30, message="the outcome")
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("cancelled", 1)
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    assert Message.objects.filter(conversation_id=conversation.pk).count() == BIG


@pytest.mark.postgres
def test_a_stop_asked_after_the_deletion_finished_leaves_it_done(cluster, user, operator_user):
    conversation = big_conversation(user, BIG)
    cluster.start(workers=1)
    job = services.request_conversation_deletion(conversation, request_id="stop-too-late")
    wait_for(lambda: statuses([job.pk])[job.pk] in Job.FINISHED, 30, message="the deletion")

    cancel_jobs(Job.objects.filter(pk=job.pk), by=operator_user)

    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()


def sessions_waiting_on_a_lock():
    """How many sessions of the test database wait on a lock (a fresh look each call: outside a
    transaction, which would see one snapshot of the statistics)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_a_paused_queue_holds_and_resumes_within_a_second_on_any_database(cluster, user):
    """SQLite's pusher polls the pause (every 0.5 s); PostgreSQL's is woken by the resume."""
    assert_pause_holds_and_resume_starts_within_a_second(cluster, user)


@pytest.mark.postgres
def test_a_paused_queue_holds_and_resumes_within_a_second_on_redis(redis_queue, cluster, user):
    """Redis' pusher polls the pause (every 0.5 s)."""
    assert_pause_holds_and_resume_starts_within_a_second(cluster, user, ON_REDIS)


def assert_pause_holds_and_resume_starts_within_a_second(cluster, user, extra_env=None):
    cluster.start(workers=2, extra_env=extra_env)
    pausing.pause("database")
    job_ids = [enqueue("test_sleep", {"user_id": user.pk}).pk for _ in range(4)]
    time.sleep(2)
    assert set(statuses(job_ids).values()) == {"queued"}

    pausing.resume("database")
    resumed_at = timezone.now()

    wait_for(lambda: set(statuses(job_ids).values()) == {"succeeded"}, 30, interval=0.01)
    first_start = min(Job.objects.filter(pk__in=job_ids).values_list("started_at", flat=True))
    broker = "redis" if extra_env else connection.vendor
    print(f"\n{broker}: first start {(first_start - resumed_at).total_seconds():.3f} s")
    assert first_start - resumed_at < timezone.timedelta(seconds=1)
    assert not Job.objects.filter(pk__in=job_ids).exclude(attempts=1).exists()
