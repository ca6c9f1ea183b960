"""The engine's and the chat services' core guarantees, each caught fast and in process: once by a
unit of the code that keeps it, once through a public surface (queues.api, the HTTP API,
manage.py). `scripts/mutation` breaks this code on purpose and expects these tests to notice."""

import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from django_q.models import OrmQ

from chat import selectors, services
from chat.models import Message
from queues.api import enqueue
from queues.core import registry, uniqueness
from queues.django_q2.broker import JobBroker
from queues.engine import engine, liveness
from queues.execution.runner import (
    AttemptSuperseded,
    begin_attempt,
    record_failure,
    record_stopped,
    run_job,
    work,
)
from queues.maintenance import rescuer
from queues.models import Job
from tests.support.clients import token_client
from tests.support.data import make_conversation
from tests.support.jobs import counted, job_lock_held
from tests.support.threads import in_a_thread

postgres_only = pytest.mark.postgres


@pytest.fixture
def clock(monkeypatch):
    """A controlled `timezone.now`: the tests move time, nothing waits for it."""

    class Clock:
        now = timezone.now().replace(microsecond=0)

        def advance_to(self, moment):
            self.now = moment

    fake = Clock()
    monkeypatch.setattr(timezone, "now", lambda: fake.now)
    return fake


def release_lock(job_id):
    """Give back the liveness lock an attempt begun in this connection still holds."""
    engine().release(job_id)


# Backoff grows with each failed attempt, through the runner.

BACKOFF = {"test_flaky": {"attempts": 4, "backoff_seconds": 10, "jitter": 0}}


def run_failing_attempts(job, clock, times):
    """Run `times` failing attempts of `job`, each when it is due; the delays the runner chose."""
    delays = []
    for _ in range(times):
        run_job(job.pk)
        job.refresh_from_db()
        assert job.status == "retrying"
        delays.append((job.run_after - clock.now).total_seconds())
        clock.advance_to(job.run_after)
    return delays


@pytest.mark.django_db(transaction=True)
def test_the_runner_doubles_the_delay_after_each_failed_attempt(user, settings, clock):
    settings.JOB_RETRY_POLICIES = BACKOFF
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 3})

    assert run_failing_attempts(job, clock, 3) == [10, 20, 40]
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result) == ("succeeded", 4, {"attempt": 4})
    counts = [counted(name, "test_flaky") for name in ("retries_scheduled", "failed", "succeeded")]
    assert counts == [3, 0, 1]


@pytest.mark.django_db(transaction=True)
def test_the_job_api_shows_each_retry_due_later_than_the_one_before(user, settings, clock):
    settings.JOB_RETRY_POLICIES = BACKOFF
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 2})
    api = token_client(user)
    started, due = clock.now, []
    for _ in range(2):
        run_job(job.pk)
        shown = api.get(f"/api/queues/jobs/{job.pk}").json()
        assert shown["status"] == "retrying"
        due.append(shown["run_after"])
        clock.advance_to(Job.objects.get(pk=job.pk).run_after)
    expected = [started + timedelta(seconds=10), started + timedelta(seconds=30)]
    assert due == [moment.isoformat().replace("+00:00", "Z") for moment in expected]


# The fence: an outcome is written only while its attempt is the job's current one, by status
# as well as by attempt number.


@pytest.mark.django_db(transaction=True)
def test_a_late_success_after_the_job_left_running_is_fenced_off(user):
    conversation = make_conversation(user, messages=2)
    job = services.request_conversation_deletion(conversation, request_id="fence")
    stale = begin_attempt(job.pk)
    # Someone else recorded this same attempt's outcome (the rescuer, declaring it lost).
    Job.objects.filter(pk=job.pk).update(status="retrying")

    with pytest.raises(AttemptSuperseded):
        work(stale)
    current = Job.objects.get(pk=job.pk)
    assert (current.status, current.attempts, current.result) == ("retrying", 1, None)
    assert Message.objects.filter(conversation_id=conversation.pk).count() == 2
    release_lock(job.pk)


@pytest.mark.django_db(transaction=True)
def test_a_late_failure_after_the_job_failed_for_good_is_fenced_off(user):
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    stale = begin_attempt(job.pk)
    Job.objects.filter(pk=job.pk).update(status="failed", last_error="declared lost")

    assert record_failure(stale, OperationalError("late")) is False
    current = Job.objects.get(pk=job.pk)
    assert (current.status, current.attempts, current.last_error) == ("failed", 1, "declared lost")
    release_lock(job.pk)


@pytest.mark.django_db(transaction=True)
def test_a_late_failure_of_a_superseded_attempt_records_nothing(user):
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    stale = begin_attempt(job.pk)
    Job.objects.filter(pk=job.pk).update(attempts=2)  # a newer attempt runs

    assert record_failure(stale, OperationalError("late")) is False
    current = Job.objects.get(pk=job.pk)
    assert (current.status, current.attempts, current.last_error) == ("running", 2, "")
    # Not even the retry's broker row it pushed before the fence said no.
    assert list(OrmQ.objects.values_list("pk", flat=True)) == [job.broker_row]
    if connection.vendor == "postgresql":
        assert not job_lock_held(job.pk), "the stale attempt gave its lock back"


@pytest.mark.django_db(transaction=True)
def test_an_attempt_is_counted_with_its_run_time_failed_or_succeeded(user, clock):
    failing = begin_attempt(enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1}).pk)
    clock.advance_to(clock.now + timedelta(seconds=3))
    assert record_failure(failing, OperationalError("outage")) is True

    succeeding = begin_attempt(enqueue("test_sleep", {"user_id": user.pk}).pk)
    clock.advance_to(clock.now + timedelta(seconds=2))
    work(succeeding)

    assert counted("run_seconds_sum", "test_flaky") == 3.0
    assert counted("run_seconds_sum", "test_sleep") == 2.0


@pytest.mark.django_db(transaction=True)
def test_a_late_stop_of_a_superseded_attempt_records_nothing_and_lets_the_job_go(user):
    job = enqueue("test_stoppable", {"user_id": user.pk})
    stale = begin_attempt(job.pk)
    if connection.vendor == "postgresql":
        assert job_lock_held(job.pk), "the attempt's begin took its lock"
    Job.objects.filter(pk=job.pk).update(attempts=2)

    record_stopped(stale)
    current = Job.objects.get(pk=job.pk)
    assert (current.status, current.attempts, current.finished_at) == ("running", 2, None)
    if connection.vendor == "postgresql":
        assert not job_lock_held(job.pk), "the stale attempt gave its lock back"


@pytest.mark.django_db(transaction=True)
def test_a_handler_that_checks_for_a_stop_nobody_asked_for_runs_to_the_end(user):
    job = enqueue("test_stoppable", {"user_id": user.pk})
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.result) == ("succeeded", {"slept": 0.0})


@pytest.mark.django_db(transaction=True)
def test_a_worker_lost_on_the_last_attempt_fails_the_job_for_good(user, settings):
    settings.JOB_RETRY_POLICIES = {"test_sleep": {"attempts": 1}}
    job = enqueue("test_sleep", {"user_id": user.pk})
    lost = begin_attempt(job.pk)
    # Its worker dies: its lock goes with its session, and (SQLite) its attempt is long overdue.
    release_lock(job.pk)
    Job.objects.filter(pk=job.pk).update(started_at=timezone.now() - timedelta(days=1))

    assert begin_attempt(job.pk) is None
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 1, "WorkerLost")
    assert job.last_error == f"worker {lost.worker} died during attempt 1"
    assert job.finished_at is not None
    assert (counted("failed"), counted("running"), counted("retries_scheduled")) == (1, 0, 0)


@pytest.mark.django_db(transaction=True)
def test_a_stop_asked_of_one_job_stops_no_other(user):
    asked = enqueue("test_stoppable", {"user_id": user.pk})
    Job.objects.filter(pk=asked.pk).update(cancel_requested_at=timezone.now())
    other = enqueue("test_stoppable", {"user_id": user.pk})

    run_job(other.pk)
    run_job(asked.pk)
    assert Job.objects.get(pk=other.pk).status == "succeeded"
    assert Job.objects.get(pk=asked.pk).status == "cancelled"


# A unique job's key is scoped by its type.


def test_equal_fields_of_two_unique_types_make_two_keys():
    data = {"user_id": 1, "name": "same"}
    keys = {
        uniqueness.key_of(registry.find(name), data) for name in ("test_unique", "test_debounced")
    }
    assert len(keys) == 2


@pytest.mark.django_db
def test_two_unique_types_with_equal_fields_both_enqueue(user, api):
    answer = api.post(
        "/api/queues/jobs",
        {"queue": "database", "type": "test_unique", "data": {"name": "same"}},
        format="json",
    )
    assert answer.status_code == 202, answer.content
    other = enqueue("test_debounced", {"user_id": user.pk, "name": "same"})

    assert not getattr(other, "deduplicated", False)
    assert sorted(Job.objects.values_list("job_type", flat=True)) == [
        "test_debounced",
        "test_unique",
    ]


# Pause: honoured where a job is claimed and where its attempt begins.


@postgres_only
@pytest.mark.django_db
def test_a_queue_paused_from_manage_py_gives_the_claim_nothing(user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    broker = JobBroker("database")
    call_command("queue", "pause", "database")
    assert broker._claim()[0] == []
    call_command("queue", "resume", "database")
    assert [row for row, _ in broker._claim()[0]] == [job.broker_row]


@pytest.mark.django_db(transaction=True)
def test_no_attempt_begins_in_a_paused_queue(user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    call_command("queue", "pause", "database")

    assert begin_attempt(job.pk) is None
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("queued", 0)


# The rescuer hands out again only attempts whose worker is gone.


@pytest.mark.django_db(transaction=True)
def test_the_rescuer_counts_an_attempt_as_alive_until_its_worker_is_gone(user, settings, clock):
    """PostgreSQL: alive while the worker's session holds its lock. SQLite: presumed alive for
    its queue's timeout and grace, to the second; the clock stands still meanwhile."""
    settings.QUEUES = {"database": {}, "other": {}}
    job = enqueue("test_sleep", {"user_id": user.pk})
    live = begin_attempt(job.pk)  # this connection holds its liveness lock
    elsewhere = enqueue("test_sleep", {"user_id": user.pk})
    # A dead attempt in another queue, long overdue: its own queue's rescue takes it.
    Job.objects.filter(pk=elsewhere.pk).update(
        queue="other", status="running", attempts=1, started_at=clock.now - timedelta(days=1)
    )

    clock.advance_to(live.started_at + liveness.presumed_alive_for(live))
    assert rescuer.lost_attempts("database") == []
    release_lock(job.pk)
    clock.advance_to(clock.now + timedelta(seconds=1))
    assert [lost.pk for lost in rescuer.lost_attempts("database")] == [job.pk]
    assert [lost.pk for lost in rescuer.lost_attempts("other")] == [elsewhere.pk]
    live.refresh_from_db()
    assert live.status == "running"


# Owner-only content and the per-user queryset.


@pytest.mark.django_db
def test_only_the_owner_reads_a_jobs_content(user, other_user, make_user):
    job = enqueue(
        "save_message",
        {"user_id": user.pk, "conversation_id": 1, "role": "user", "content": "private words"},
    )
    root = make_user("root")
    root.is_superuser = True
    assert job.data_for(user)["content"] == "private words"
    for viewer in (other_user, root, None):
        assert "private words" not in str(job.data_for(viewer))


@pytest.mark.django_db
def test_a_users_conversations_are_theirs_only(user, other_user):
    mine = make_conversation(user)
    theirs = make_conversation(other_user)

    assert list(selectors.conversations_of(user)) == [mine]
    assert selectors.conversation_of(user, theirs.pk) is None
    assert selectors.conversation_of(user, mine.pk) == mine


# The message/deletion lock: a message is never added to a conversation whose deletion was
# requested. The deletion holds the conversation's row while a message is on its way.


def wait_until_blocked_on_a_lock():
    """Until another session of this database waits for a lock (the one this one holds)."""
    for _ in range(500):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0]:
                return
        threading.Event().wait(0.02)
    raise AssertionError("no session ever waited for the conversation's lock")


def race_deletion_against(conversation, fn, *args):
    """Hold the conversation's row, start `fn`, and once it waits, request the deletion.

    Returns `fn`'s `join()`: its result, or what it raised.
    """
    with transaction.atomic():
        services.Conversation.objects.select_for_update().get(pk=conversation.pk)
        join = in_a_thread(fn, *args)
        wait_until_blocked_on_a_lock()
        assert services.request_conversation_deletion(conversation, request_id="race")
    return join


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_message_racing_a_deletion_request_is_refused(user):
    conversation = make_conversation(user, messages=2)
    join = race_deletion_against(
        conversation,
        lambda: services.add_message(
            conversation_id=conversation.pk, user_id=user.pk, role="user", content="late"
        ),
    )
    with pytest.raises(services.ConversationGone):
        join()
    assert Message.objects.filter(conversation_id=conversation.pk).count() == 2


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_save_message_job_racing_a_deletion_request_fails_and_adds_nothing(user):
    conversation = make_conversation(user, messages=2)
    job = enqueue(
        "save_message",
        {"user_id": user.pk, "conversation_id": conversation.pk, "role": "user", "content": "late"},
    )
    race_deletion_against(conversation, run_job, job.pk)()

    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 1, "ConversationGone")
    assert "content" not in job.data, "a job that will never run keeps no content"
    assert Message.objects.filter(conversation_id=conversation.pk).count() == 2
    deletion = Job.objects.get(job_type="delete_conversation")
    run_job(deletion.pk)
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
