"""The queues app's public face: enqueue validation, the runner's state machine, retention."""

from datetime import timedelta

import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone
from django_q.models import OrmQ

from chat.models import Conversation, Message
from queues.api import enqueue, keeps_content_about, keeps_content_about_sql, prepared_cursor
from queues.core.selectors import counter_totals
from queues.core.services import retry_jobs
from queues.errors import JobValidationError, WorkerLost
from queues.execution.runner import record_failure, run_job
from queues.maintenance.periodic import prune_finished_jobs
from queues.models import Job
from tests.support.cluster import wait_for
from tests.support.jobs import counted
from tests.support.threads import in_a_thread

pytestmark = pytest.mark.django_db


def test_enqueue_stores_a_queued_record_and_a_broker_row(user):
    job = enqueue("test_sleep", {"user_id": user.pk}, request_id="r-1")
    assert job.status == "queued" and job.attempts == 0 and job.max_attempts == 3
    assert job.data == {"user_id": user.pk, "request_id": "r-1", "fail_times": 0, "seconds": 0.0}
    assert OrmQ.objects.get().key == "database"


def test_a_jobs_broker_row_carries_its_claim_rank(user):
    """Claims take rows by this rank (lower first): the job type's priority, then app before
    client jobs."""
    urgent = enqueue("test_unique", {"user_id": user.pk, "name": "r"})
    plain = enqueue("test_sleep", {"user_id": user.pk})

    def row_rank(job):
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT priority FROM {OrmQ._meta.db_table} WHERE id = %s", [job.broker_row]
            )
            return cursor.fetchone()[0]

    assert [row_rank(urgent), row_rank(plain)] == [5, 1]


@pytest.mark.parametrize(
    "job_type, data, problem",
    [
        ("explode", {}, "unknown job type 'explode'"),
        ("delete_conversation", {}, "conversation_id"),
        ("delete_conversation", {"conversation_id": "abc"}, "conversation_id"),
        ("delete_conversation", {"conversation_id": -4}, "conversation_id"),
        (
            "save_message",
            {"conversation_id": 1, "role": "robot", "content": "x"},
            "role",
        ),
        ("save_message", {"conversation_id": 1, "role": "user"}, "content"),
        ("create_conversation", {"title": ""}, "title"),
        ("create_conversation", {"title": "t" * 201}, "title"),
    ],
)
def test_enqueue_refuses_bad_jobs_naming_the_problem_and_stores_nothing(
    user, job_type, data, problem
):
    with pytest.raises(JobValidationError, match=problem):
        enqueue(job_type, {"user_id": user.pk, **data})
    assert Job.objects.count() == 0 and OrmQ.objects.count() == 0


def test_enqueue_refuses_an_unknown_user(db):
    with pytest.raises(JobValidationError, match="user_id"):
        enqueue("delete_conversation", {"user_id": 424242, "conversation_id": 1})


def test_create_conversation_and_save_message_jobs_run_from_code(user):
    created = enqueue("create_conversation", {"user_id": user.pk, "title": "By job"})
    run_job(created.id)
    created.refresh_from_db()
    conversation_id = created.result["conversation_id"]
    assert created.status == "succeeded"
    assert created.subject == f"conversation:{conversation_id}"
    saved = enqueue(
        "save_message",
        {"user_id": user.pk, "conversation_id": conversation_id, "role": "user", "content": "hi"},
    )
    run_job(saved.id)
    saved.refresh_from_db()
    assert saved.status == "succeeded"
    assert Message.objects.get(pk=saved.result["message_id"]).content == "hi"


@pytest.mark.parametrize("case", ["missing", "not_owner", "deletion_requested"])
def test_save_message_to_an_unavailable_conversation_fails_permanently(user, other_user, case):
    owner = other_user if case == "not_owner" else user
    conversation = Conversation.objects.create(owner=owner, title="t")
    if case == "deletion_requested":
        Conversation.objects.filter(pk=conversation.pk).update(deletion_requested_at=timezone.now())
    target = conversation.pk + 1000 if case == "missing" else conversation.pk
    job = enqueue(
        "save_message",
        {"user_id": user.pk, "conversation_id": target, "role": "user", "content": "x"},
    )
    run_job(job.id)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 1, "ConversationGone")
    assert Message.objects.count() == 0
    assert "content" not in job.data, "a job that can never run keeps no content"
    assert job.finished_at is not None


def test_a_job_failed_by_an_outage_keeps_its_content_for_a_retry(user, settings, monkeypatch):
    settings.JOB_RETRY_POLICIES = {"save_message": {"attempts": 1}}
    conversation = Conversation.objects.create(owner=user, title="t")

    def outage(**kwargs):
        raise OperationalError("database unreachable")

    monkeypatch.setattr("chat.services.add_message", outage)
    job = enqueue(
        "save_message",
        {"user_id": user.pk, "conversation_id": conversation.pk, "role": "user", "content": "x"},
    )
    run_job(job.id)
    job.refresh_from_db()
    assert (job.status, job.last_error_class) == ("failed", "OperationalError")
    assert job.data["content"] == "x"


def test_transient_failure_schedules_a_delayed_retry_in_the_database(user, monkeypatch):
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    stopped_clock = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: stopped_clock)
    run_job(job.id)
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("retrying", 1)
    assert job.last_error_class == "OperationalError"
    assert "simulated outage" in job.traceback
    assert job.run_after == stopped_clock + timedelta(seconds=2)
    # The retry's broker row is invisible to workers until run_after.
    assert OrmQ.objects.filter(lock__gte=job.run_after - timedelta(milliseconds=5)).count() == 1
    assert OrmQ.objects.get(pk=job.broker_row).lock >= job.run_after - timedelta(milliseconds=5)


def test_an_early_delivery_of_a_waiting_retry_does_nothing(user):
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    run_job(job.id)
    run_job(job.id)  # e.g. a stale copy of the first broker row
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("retrying", 1)


def test_permanent_failure_fails_at_once(user):
    job = enqueue("test_permanent", {"user_id": user.pk})
    run_job(job.id)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error) == ("failed", 1, "simulated bad data")
    assert job.finished_at is not None


def test_transient_failures_fail_the_job_after_its_attempts(user):
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 5})
    for _ in range(3):
        Job.objects.filter(pk=job.pk).update(run_after=timezone.now())
        run_job(job.id)
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("failed", 3)


def test_a_running_job_whose_worker_died_counts_the_lost_attempt(user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=job.pk).update(status="running", attempts=3, worker="host:1")
    run_job(job.id)  # redelivered after the visibility timeout
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 3, "WorkerLost")
    assert "died during attempt 3" in job.last_error


def test_a_lost_attempt_of_a_type_no_longer_declared_fails_the_job_for_good(user):
    """The rescuer records a dead worker's attempt (a transient error) for a job whose type was
    removed from the code: it cannot run again, so it fails, instead of the outcome crashing."""
    job = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=job.pk).update(
        job_type="removed_type", status="running", attempts=1, started_at=timezone.now()
    )
    job.refresh_from_db()
    assert record_failure(job, WorkerLost("worker host:1 died during attempt 1"), own_attempt=False)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 1, "WorkerLost")


def test_delivery_of_a_finished_job_does_nothing(user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    run_job(job.id)
    run_job(job.id)
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 1)


def test_a_delivery_of_a_job_no_longer_stored_does_nothing(user):
    """Its record was pruned or deleted with its subject while a broker row still named it."""
    job = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=job.pk).delete()
    counters_before = counter_totals()
    assert run_job(job.id) is None
    assert not Job.objects.exists() and counter_totals() == counters_before


def test_retry_gives_failed_jobs_a_fresh_attempt_budget(user, staff_user):
    job = enqueue("test_permanent", {"user_id": user.pk})
    run_job(job.id)
    OrmQ.objects.all().delete()
    assert retry_jobs(Job.objects.all(), by=staff_user) == 1
    job.refresh_from_db()
    assert (job.status, job.attempts, job.max_attempts) == ("queued", 1, 4)
    assert job.retried_by == staff_user and job.retried_at is not None
    assert OrmQ.objects.count() == 1


def test_retention_keeps_the_newest_50_succeeded_and_100_failed_per_queue_and_user(user):
    now = timezone.now()
    for status, count in (("succeeded", 60), ("failed", 110), ("queued", 5)):
        Job.objects.bulk_create(
            Job(
                queue="database",
                job_type="test_sleep",
                data={},
                status=status,
                max_attempts=3,
                finished_at=None if status == "queued" else now - timedelta(seconds=i),
            )
            for i in range(count)
        )
    assert prune_finished_jobs() == 10 + 10
    newest = now - timedelta(seconds=49)
    assert Job.objects.filter(status="succeeded").count() == 50
    assert not Job.objects.filter(status="succeeded", finished_at__lt=newest).exists()
    assert Job.objects.filter(status="failed").count() == 100
    assert Job.objects.filter(status="queued").count() == 5


def finished_jobs(owner, status, count, *, newest):
    return Job.objects.bulk_create(
        Job(
            queue="database",
            job_type="test_sleep",
            data={},
            user=owner,
            status=status,
            max_attempts=3,
            finished_at=newest - timedelta(seconds=i),
        )
        for i in range(count)
    )


def test_retention_counts_per_user_so_a_flood_evicts_nobody_elses_records(
    user, other_user, settings
):
    now = timezone.now()
    settings.JOB_RETENTION = {"succeeded": 5, "failed": 5, "cancelled": 5}
    quiet = finished_jobs(user, "failed", 3, newest=now - timedelta(hours=1))
    finished_jobs(other_user, "failed", 1000, newest=now)
    assert prune_finished_jobs() == 995
    assert Job.objects.filter(pk__in=[j.pk for j in quiet]).count() == 3
    assert Job.objects.filter(user=other_user).count() == 5


def test_retention_prunes_cancelled_records_like_the_others(user, settings):
    settings.JOB_RETENTION = {"succeeded": 0, "failed": 0, "cancelled": 0}
    finished_jobs(user, "cancelled", 201, newest=timezone.now())
    finished_jobs(None, "succeeded", 3, newest=timezone.now())
    assert prune_finished_jobs() == 204
    assert not Job.objects.exists()


def test_retention_by_age_drops_records_older_than_their_statuss_limit(user, settings):
    now = timezone.now()
    settings.JOB_RETENTION_MAX_AGE = {"succeeded": timedelta(days=7), "cancelled": 3600}
    fresh = finished_jobs(user, "succeeded", 3, newest=now - timedelta(days=6))
    finished_jobs(user, "succeeded", 4, newest=now - timedelta(days=8))
    finished_jobs(user, "cancelled", 2, newest=now - timedelta(hours=2))
    old_failed = finished_jobs(user, "failed", 2, newest=now - timedelta(days=30))
    live = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=live.pk).update(created_at=now - timedelta(days=30))
    assert prune_finished_jobs(now) == 6
    kept = set(Job.objects.values_list("pk", flat=True))
    assert kept == {j.pk for j in fresh + old_failed} | {live.pk}


def test_retention_counts_a_type_with_its_own_counts_apart(user, settings):
    now = timezone.now()
    settings.JOB_RETENTION = {"succeeded": 2}
    settings.JOB_RETENTION_BY_TYPE = {"test_permanent": {"count": {"succeeded": 5}}}
    sleeps = finished_jobs(user, "succeeded", 10, newest=now)
    permanent = finished_jobs(user, "succeeded", 10, newest=now - timedelta(hours=1))
    Job.objects.filter(pk__in=[j.pk for j in permanent]).update(job_type="test_permanent")
    assert prune_finished_jobs(now) == 8 + 5
    assert set(Job.objects.values_list("pk", flat=True)) == {
        j.pk for j in sleeps[:2] + permanent[:5]
    }


def test_a_types_own_age_limit_replaces_the_statuss(user, settings):
    now = timezone.now()
    settings.JOB_RETENTION_MAX_AGE = {"failed": timedelta(days=1)}
    settings.JOB_RETENTION_BY_TYPE = {
        "test_permanent": {"max_age": {"failed": None}},  # kept for an operator, however old
        "test_fails_once": {"max_age": {"failed": 60, "succeeded": 60}},
    }
    jobs = {
        job_type: finished_jobs(user, status, 1, newest=now - age)[0]
        for job_type, status, age in [
            ("test_sleep", "failed", timedelta(days=2)),
            ("test_permanent", "failed", timedelta(days=300)),
            ("test_fails_once", "failed", timedelta(minutes=2)),
            ("test_flaky", "succeeded", timedelta(days=300)),
        ]
    }
    for job_type, job in jobs.items():
        Job.objects.filter(pk=job.pk).update(job_type=job_type)
    assert prune_finished_jobs(now) == 2
    kept = set(Job.objects.values_list("job_type", flat=True))
    assert kept == {"test_permanent", "test_flaky"}


def test_a_handler_running_past_its_queue_timeout_is_cut_off_and_retried(user, settings):
    settings.QUEUES = {"database": {**settings.QUEUES["database"], "timeout": 1}}
    job = enqueue("test_sleep", {"user_id": user.pk, "seconds": 5})
    run_job(job.id)
    job.refresh_from_db()
    assert (job.status, job.last_error_class) == ("retrying", "JobTimeout")
    assert "timeout of 1s" in job.last_error
    # Cut off inside the handler's sleep, not judged after it had run to its end.
    assert 'in sleep\n    time.sleep(data["seconds"])' in job.traceback


def test_worker_refuses_to_run_without_a_reachable_database(user, monkeypatch):
    from django.db import OperationalError, connection

    from queues.errors import TransientJobError

    job = enqueue("test_sleep", {"user_id": user.pk})

    def unreachable():
        raise OperationalError("connection refused")

    monkeypatch.setattr(connection, "ensure_connection", unreachable)
    with pytest.raises(TransientJobError, match="database unreachable"):
        run_job(job.id)
    monkeypatch.undo()
    monkeypatch.setitem(connection.settings_dict, "NAME", "")
    monkeypatch.setattr("django.conf.settings.DATABASES", {"default": {"NAME": ""}})
    with pytest.raises(TransientJobError, match="database not configured"):
        run_job(job.id)
    monkeypatch.undo()
    # The job was not touched: its broker row is delivered again later.
    assert Job.objects.get(pk=job.pk).attempts == 0


def test_maintenance_drops_per_minute_stats_older_than_two_hours(db):
    from queues.maintenance.periodic import prune
    from queues.models import JobMinute

    now = timezone.now().replace(second=0, microsecond=0)
    for age in (1, 119, 121, 600):
        JobMinute.objects.create(
            queue="database", job_type="test_sleep", minute=now - timedelta(minutes=age)
        )
    assert prune() == 2
    assert JobMinute.objects.count() == 2


def waiting_on_a_lock(statement):
    """How many sessions wait on a row lock while running `statement` (a prefix of its SQL)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # read afresh inside a transaction
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s",
            [statement + "%"],
        )
        return cursor.fetchone()[0]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "retention",
    [
        {"JOB_RETENTION": {"succeeded": 0, "failed": 0, "cancelled": 0}},
        {"JOB_RETENTION_MAX_AGE": {"failed": 60}},
        {"JOB_RETENTION_BY_TYPE": {"test_permanent": {"count": {"failed": 0}}}},
        {"JOB_RETENTION_BY_TYPE": {"test_permanent": {"max_age": {"failed": 60}}}},
    ],
    ids=["count", "age", "type's count", "type's age"],
)
def test_retention_spares_a_job_retried_while_its_delete_waits(failed_job, settings, retention):
    """The retry holds its row (updated, not committed) while retention's DELETE, which selected
    the job among the failed ones to drop (by count or by age), waits on it; the retry commits,
    and the DELETE, seeing a queued job, leaves it."""
    for name, value in retention.items():
        setattr(settings, name, value)
    Job.objects.filter(pk=failed_job.pk).update(finished_at=timezone.now() - timedelta(hours=1))
    with transaction.atomic():
        assert retry_jobs(Job.objects.filter(pk=failed_job.pk)) == 1
        prune = in_a_thread(prune_finished_jobs)
        wait_for(lambda: waiting_on_a_lock('DELETE FROM "queues_job"'), 20, message="the DELETE")
    assert prune() == 0

    job = Job.objects.get(pk=failed_job.pk)
    assert job.status == "queued"
    assert OrmQ.objects.filter(pk=job.broker_row).exists()
    assert counted("waiting", "test_permanent") == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_retry_waiting_on_retentions_delete_finds_the_job_gone(failed_job, settings):
    """The other order: the DELETE holds the row; the retry waits, then retries nothing, and
    pushes no broker row."""
    settings.JOB_RETENTION = {"succeeded": 0, "failed": 0, "cancelled": 0}
    OrmQ.objects.all().delete()
    with transaction.atomic():
        assert prune_finished_jobs() == 1
        retry = in_a_thread(lambda: retry_jobs(Job.objects.filter(pk=failed_job.pk)))
        wait_for(lambda: waiting_on_a_lock('SELECT "queues_job"'), 20, message="the retry")
    assert retry() == 0

    assert not Job.objects.filter(pk=failed_job.pk).exists()
    assert not OrmQ.objects.exists()
    assert counted("waiting", "test_permanent") == 0


def test_the_content_question_asked_inside_a_statement_answers_as_asked_alone(user):
    """`keeps_content_about_sql` is `keeps_content_about` as a condition of the caller's own
    statement: true only for a subject a job record of a type with content is about."""
    conversation = Conversation.objects.create(owner=user, title="t")
    subject = Conversation.subject_for(conversation.pk)
    message = {"conversation_id": conversation.pk, "role": "user", "content": "hi"}
    enqueue("save_message", {"user_id": user.pk, **message})
    for about, kept in [(subject, True), (Conversation.subject_for(conversation.pk + 1), False)]:
        condition, params = keeps_content_about_sql(about)
        with prepared_cursor() as cursor:
            cursor.execute(f"SELECT {condition}", params)
            assert bool(cursor.fetchone()[0]) is kept is keeps_content_about(about)
