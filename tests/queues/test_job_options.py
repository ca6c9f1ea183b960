"""Options per job type and per enqueue (timeout, delay, attempts, backoff, priority), a handler
that snoozes its job, and progress a handler reports: through `queues.api`, the runner and the
job API, in-process (the real cluster: tests/processes/test_job_options.py)."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from chat.models import Conversation
from queues.api import (
    JobData,
    JobValidationError,
    RetryPolicy,
    Snooze,
    enqueue,
    enqueue_if,
    enqueue_many,
    job_type,
)
from queues.core import registry
from queues.execution import progress
from queues.execution.runner import attempt_timeout, record_snoozed, run_job
from queues.extras.task_backend import job_type_for
from queues.models import Job, JobEvent
from tests.support.clients import token_client
from tests.support.jobs import counted

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def clock(monkeypatch):
    """A controlled `timezone.now`: the tests move time, nothing waits for it."""

    class Clock:
        now = timezone.now().replace(microsecond=0)

        def advance(self, seconds):
            self.now += timedelta(seconds=seconds)

    fake = Clock()
    monkeypatch.setattr(timezone, "now", lambda: fake.now)
    return fake


@pytest.fixture
def scratch_types(monkeypatch):
    """Types a test registers are gone after it."""
    monkeypatch.setattr(registry, "_types", dict(registry._types))


# Declared per type.


def test_a_types_declared_delay_and_timeout_apply_to_its_jobs(user, clock):
    job = enqueue("test_declared_options", {"user_id": user.pk})

    assert job.run_after == clock.now + timedelta(seconds=30)
    assert (job.max_attempts, job.timeout, job.backoff_seconds) == (2, None, None)
    assert attempt_timeout(job) == 1  # the type's, within the queue's 120 s


def test_a_type_without_options_runs_within_its_queues_timeout(user, settings):
    job = enqueue("test_sleep", {"user_id": user.pk})

    assert attempt_timeout(job) == settings.QUEUES["database"]["timeout"]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"timeout": 0}, "timeout must be a number of seconds, more than 0"),
        ({"timeout": 10_000}, "timeout must be at most its queue's timeout"),
        ({"timeout": "5"}, "timeout must be a number of seconds"),
        ({"delay": -1}, "delay must be a number of seconds, at least 0"),
    ],
)
def test_a_type_declaring_a_bad_option_is_refused_when_declared(scratch_types, options, problem):
    with pytest.raises(ValueError, match=problem):

        @job_type("test_badly_declared", queue="database", schema=JobData, **options)
        def handler(data):
            pass


def test_a_type_declares_attempts_and_backoff_with_its_retry_policy(scratch_types, user):
    @job_type(
        "test_policy_declared",
        queue="database",
        schema=JobData,
        retry=RetryPolicy(attempts=6, backoff_seconds=1.5),
        priority=4,
    )
    def handler(data):
        pass

    job = enqueue("test_policy_declared", {"user_id": user.pk})
    assert (job.max_attempts, job.priority) == (6, 4)


# Chosen per enqueue.


def test_each_option_overrides_the_types_for_one_job(user, clock):
    job = enqueue(
        "test_declared_options",
        {"user_id": user.pk},
        delay=5,
        timeout=0.5,
        max_attempts=9,
        backoff_seconds=3,
        priority=7,
    )
    job.refresh_from_db()

    assert job.run_after == clock.now + timedelta(seconds=5)
    assert (job.timeout, job.max_attempts, job.backoff_seconds, job.priority) == (0.5, 9, 3, 7)
    assert attempt_timeout(job) == 0.5


def test_a_delay_may_be_a_timedelta_and_run_after_a_moment(user, clock):
    later = clock.now + timedelta(hours=2)

    by_delay = enqueue("test_sleep", {"user_id": user.pk}, delay=timedelta(minutes=3))
    by_moment = enqueue("test_declared_options", {"user_id": user.pk}, run_after=later)
    now = enqueue("test_declared_options", {"user_id": user.pk}, delay=0)

    assert by_delay.run_after == clock.now + timedelta(minutes=3)
    assert by_moment.run_after == later  # instead of the type's delay
    assert now.run_after == clock.now


def test_enqueue_many_and_enqueue_if_take_the_same_options(user, conversation, clock):
    many = enqueue_many("test_sleep", [{"user_id": user.pk}] * 2, delay=60, timeout=2)
    changed = Conversation.objects.filter(pk=conversation.pk, title=conversation.title)
    one = enqueue_if(
        changed, {"title": "renamed"}, "test_sleep", {"user_id": user.pk}, max_attempts=1
    )

    stored = Job.objects.filter(pk__in=[job.pk for job in many])
    assert {(job.run_after, job.timeout) for job in stored} == {
        (clock.now + timedelta(seconds=60), 2.0)
    }
    assert Job.objects.get(pk=one.pk).max_attempts == 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 121}, "timeout"),  # more than the queue's
        ({"timeout": True}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": 1001}, "max_attempts"),
        ({"backoff_seconds": -1}, "backoff_seconds"),
        ({"backoff_seconds": float("inf")}, "backoff_seconds"),
        ({"delay": -5}, "delay"),
        ({"delay": "soon"}, "delay"),
        ({"delay": 1e20}, "delay"),
        ({"delay": 5, "run_after": timezone.now()}, "delay"),
        ({"run_after": "2030-01-01"}, "run_after"),
        ({"priority": 10}, "priority"),
    ],
)
def test_a_bad_option_is_refused_naming_it_and_stores_nothing(user, options, field):
    with pytest.raises(JobValidationError) as refused:
        enqueue("test_sleep", {"user_id": user.pk}, **options)
    with pytest.raises(JobValidationError):
        enqueue_many("test_sleep", [{"user_id": user.pk}], **options)

    assert list(refused.value.fields) == [field]
    assert not Job.objects.exists()


def test_a_naive_run_after_is_refused(user):
    naive = timezone.now().replace(tzinfo=None)
    with pytest.raises(JobValidationError, match="run_after must be an aware datetime"):
        enqueue("test_sleep", {"user_id": user.pk}, run_after=naive)


# The runner honours them.


def test_a_per_enqueue_timeout_stops_the_handler(user):
    job = enqueue("test_sleep", {"user_id": user.pk, "seconds": 5}, timeout=0.2, max_attempts=1)

    run_job(job.pk)
    job.refresh_from_db()

    assert (job.status, job.last_error_class) == ("failed", "JobTimeout")
    assert job.last_error == "job exceeded its timeout of 0.2s"


def test_a_per_enqueue_backoff_sets_the_retrys_delay(user, settings, clock):
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 2}, backoff_seconds=7)

    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.run_after) == ("retrying", clock.now + timedelta(seconds=7))
    clock.advance(7)
    run_job(job.pk)
    job.refresh_from_db()
    assert job.run_after == clock.now + timedelta(seconds=14)


def test_a_per_enqueue_attempt_budget_ends_the_retries(user):
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 5}, max_attempts=1)

    run_job(job.pk)
    job.refresh_from_db()

    assert (job.status, job.attempts, job.max_attempts) == ("failed", 1, 1)


# Snooze.


def test_a_snoozed_job_waits_again_without_spending_an_attempt(user, clock):
    job = enqueue("test_snoozing", {"user_id": user.pk, "ready_after": 10, "snooze_seconds": 4})

    run_job(job.pk)
    job.refresh_from_db()

    assert (job.status, job.attempts, job.run_after) == (
        "queued",
        0,
        clock.now + timedelta(seconds=4),
    )
    assert not Conversation.objects.exists()  # the snoozed run's work rolled back
    assert (counted("waiting", "test_snoozing"), counted("running", "test_snoozing")) == (1, 0)
    assert counted("attempts_failed", "test_snoozing") == 0
    (event,) = JobEvent.objects.filter(job_id=job.pk)
    assert event.action == "snoozed" and event.detail.startswith("for 4s, until ")
    if connection.vendor == "postgresql":  # a new broker row, due when the snooze ends
        assert job.broker_row is not None

    run_job(job.pk)  # not due yet: nothing happens
    assert Job.objects.get(pk=job.pk).status == "queued"

    for _ in range(3):  # 4 s, 8 s: snoozed; 12 s: ready
        clock.advance(4)
        run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result) == ("succeeded", 1, {"attempt": 1})
    assert JobEvent.objects.filter(job_id=job.pk, action="snoozed").count() == 3
    assert counted("succeeded", "test_snoozing") == 1
    assert counted("waiting", "test_snoozing") == counted("running", "test_snoozing") == 0


def test_a_snooze_keeps_the_attempts_already_spent(user, settings, clock):
    job = enqueue("test_snoozing", {"user_id": user.pk, "ready_after": 100}, max_attempts=2)
    Job.objects.filter(pk=job.pk).update(attempts=1, status="retrying")

    run_job(job.pk)
    job.refresh_from_db()

    assert (job.status, job.attempts, job.max_attempts) == ("queued", 1, 2)


def test_a_snooze_of_a_superseded_attempt_records_nothing(user):
    job = enqueue("test_snoozing", {"user_id": user.pk, "ready_after": 10})
    Job.objects.filter(pk=job.pk).update(status="running", attempts=2, started_at=timezone.now())
    stale = Job.objects.get(pk=job.pk)
    stale.attempts = 1  # its worker's view: attempt 1, which a newer one replaced

    record_snoozed(stale, 5)
    job.refresh_from_db()

    assert (job.status, job.attempts) == ("running", 2)
    assert not JobEvent.objects.filter(job_id=job.pk).exists()


def test_a_job_that_cannot_wait_again_for_its_unique_key_fails_instead(user):
    # Unique among waiting jobs only: while one runs, a twin may wait; the runner cannot snooze.
    running = enqueue("test_debounced", {"user_id": user.pk, "name": "n"})
    Job.objects.filter(pk=running.pk).update(
        status="running", attempts=1, started_at=timezone.now()
    )
    twin = enqueue("test_debounced", {"user_id": user.pk, "name": "n"})

    record_snoozed(Job.objects.get(pk=running.pk), 5)

    failed = Job.objects.get(pk=running.pk)
    assert (failed.status, failed.last_error) == (
        "failed",
        "snoozed, but another job holds its unique key",
    )
    assert Job.objects.get(pk=twin.pk).status == "queued"


def test_snooze_takes_seconds_or_a_timedelta():
    assert Snooze(timedelta(minutes=1)).seconds == 60.0
    for bad in (-1, float("nan"), "5", True, 1e20):
        with pytest.raises(ValueError, match="snooze takes a number of seconds"):
            Snooze(bad)


# Progress.


def test_progress_reported_by_the_handler_is_in_the_record_and_the_api(user):
    job = enqueue("test_progress", {"user_id": user.pk, "steps": 3})

    run_job(job.pk)
    shown = token_client(user).get(f"/api/queues/jobs/{job.pk}").json()

    assert (shown["status"], shown["progress"], shown["progress_message"]) == (
        "succeeded",
        100.0,
        "step 3 of 3",
    )


def test_progress_survives_a_failed_attempt(user):
    job = enqueue("test_progress", {"user_id": user.pk, "steps": 4, "fail_after": 1})

    run_job(job.pk)
    job.refresh_from_db()

    assert (job.status, job.progress, job.progress_message) == ("failed", 25.0, "step 1 of 4")


@pytest.mark.parametrize(
    ("percent", "message"),
    [(101, None), (-1, None), (True, None), ("50", None), (None, "x" * 201), (None, 5)],
)
def test_bad_progress_is_refused(user, percent, message):
    job = enqueue("test_progress", {"user_id": user.pk})

    with pytest.raises(ValueError):
        progress.reporter(job)(percent, message)


def test_progress_of_an_attempt_that_is_not_current_is_not_written(user):
    job = enqueue("test_progress", {"user_id": user.pk})  # queued: no attempt runs

    assert progress.reporter(job)(50, "halfway") is False
    assert Job.objects.get(pk=job.pk).progress is None


def test_a_progress_message_is_redacted_like_output_for_everyone_but_the_owner(user, other_user):
    job = Job(
        job_type=job_type_for("database"), user=user, progress=40, progress_message="Dear Ann"
    )

    assert job.progress_message_for(user) == "Dear Ann"
    assert job.progress_message_for(other_user) == "[8 chars]"
    assert job.progress_message_for(None) == "[8 chars]"


# The job API.


def test_a_client_may_delay_its_job(user, clock):
    response = token_client(user).post(
        "/api/queues/jobs",
        {"queue": "database", "type": "test_sleep", "data": {}, "delay": 90},
        format="json",
    )

    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.run_after == clock.now + timedelta(seconds=90)
    assert response.json()["timeout"] is None and response.json()["progress"] is None


def test_a_client_may_delay_a_bulk_of_jobs(user, clock):
    response = token_client(user).post(
        "/api/queues/jobs/bulk",
        {"queue": "database", "type": "test_sleep", "items": [{}, {}], "delay": 30},
        format="json",
    )

    assert response.status_code == 202, response.content
    due = clock.now + timedelta(seconds=30)
    assert set(Job.objects.values_list("run_after", flat=True)) == {due}


@pytest.mark.parametrize("delay", [-1, 86_401, "soon"])
def test_a_clients_bad_delay_is_a_400_naming_it(user, delay):
    response = token_client(user).post(
        "/api/queues/jobs",
        {"queue": "database", "type": "test_sleep", "data": {}, "delay": delay},
        format="json",
    )

    assert response.status_code == 400
    assert "delay" in response.json()["fields"], response.json()
    assert not Job.objects.exists()
