"""Liveness, fencing and rescue, in process: who may run a job, who may record its outcome.

A worker's attempt is alive while its connection holds the job's advisory lock (PostgreSQL);
every outcome is written only if its attempt is still the job's current one.
"""

from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ

from chat import services
from chat.models import Conversation, Message
from chat.sweeper import sweep_deletions
from queues.api import enqueue, enqueue_many
from queues.django_q2.broker import JobBroker
from queues.engine import engine, liveness, postgresql
from queues.execution.runner import AttemptSuperseded, begin_attempt, record_failure, run_job, work
from queues.maintenance.rescuer import rescue
from queues.models import Job
from tests.support.cluster import database_session, wait_for
from tests.support.data import make_conversation
from tests.support.jobs import claims_lock_held, job_lock_held
from tests.support.threads import in_other_connection
from tests.support.users import grant

postgres_only = pytest.mark.postgres


def doomed_conversation(user, messages=3):
    conversation = make_conversation(user, title="Doomed", messages=messages)
    job = services.request_conversation_deletion(conversation, request_id="liveness")
    return conversation, job


def worker_gone(job_id):
    """Begin an attempt of `job_id` on a connection that then closes, as a killed worker's does.

    Returns once PostgreSQL has ended that session (and so released its locks).
    """
    in_other_connection(begin_attempt, job_id)

    def released():
        return not job_lock_held(job_id)

    wait_for(released, 10, message="the closed session's locks released")


@pytest.mark.django_db(transaction=True)
def test_a_stale_workers_late_outcome_is_fenced_and_its_work_rolled_back(user):
    conversation, job = doomed_conversation(user)
    stale = begin_attempt(job.pk)
    assert stale.attempts == 1
    # The attempt was taken over (declared lost, a newer attempt began) while its worker lived on.
    Job.objects.filter(pk=job.pk).update(attempts=2)

    with pytest.raises(AttemptSuperseded):
        work(stale)
    assert Conversation.objects.filter(pk=conversation.pk).exists(), "the late work rolled back"
    assert Message.objects.filter(conversation=conversation).count() == 3
    assert record_failure(stale, OperationalError("late failure")) is False
    current = Job.objects.get(pk=job.pk)
    assert (current.status, current.attempts, current.last_error, current.result) == (
        "running",
        2,
        "",
        None,
    )
    engine().release(job.pk)


@pytest.mark.django_db(transaction=True)
def test_a_delivery_taken_over_while_it_ran_records_nothing_and_lets_the_job_go(
    user, monkeypatch, caplog
):
    job = enqueue("test_sleep", {"user_id": user.pk})

    def taken_over_meanwhile(attempt):
        Job.objects.filter(pk=job.pk).update(attempts=2)  # declared lost, run again elsewhere
        return work(attempt)

    monkeypatch.setattr("queues.execution.runner.work", taken_over_meanwhile)
    assert run_job(job.pk) is None

    current = Job.objects.get(pk=job.pk)
    assert (current.status, current.attempts, current.result) == ("running", 2, None)
    assert "attempt 1 was taken over by a newer one; nothing recorded" in caplog.messages
    if connection.vendor == "postgresql":
        assert not job_lock_held(job.pk), "the superseded delivery gave its lock back"


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_delivery_of_a_running_job_does_nothing(user):
    """Alive: its worker's session holds its lock (PostgreSQL); it began in its time (SQLite)."""
    _, job = doomed_conversation(user)
    live = begin_attempt(job.pk)

    assert in_other_connection(begin_attempt, job.pk) is None
    during = Job.objects.get(pk=job.pk)
    assert (during.status, during.attempts, during.last_error_class) == ("running", 1, "")

    assert work(live)["deleted"] is True
    assert in_other_connection(begin_attempt, job.pk) is None  # finished: nothing to do
    after = Job.objects.get(pk=job.pk)
    assert (after.status, after.attempts, after.last_error_class) == ("succeeded", 1, "")


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_every_outcome_gives_the_attempts_liveness_lock_back(user):
    jobs = [
        enqueue("test_sleep", {"user_id": user.pk}),
        enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1}),
        enqueue("test_permanent", {"user_id": user.pk}),
    ]
    for job in jobs:
        run_job(job.pk)
    statuses = [Job.objects.get(pk=job.pk).status for job in jobs]
    assert statuses == ["succeeded", "retrying", "failed"]
    assert [job_lock_held(job.pk) for job in jobs] == [False, False, False]


def terminate(pid):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 10000)", [pid])  # waits until it is gone


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_path_whose_connection_was_cut_gives_no_lock_back_and_raises_nothing(user):
    """The lock went with the session: nothing to give back, no error on a connection that is
    gone (the runner's paths that record nothing end with this)."""
    job = enqueue("test_sleep", {"user_id": user.pk})
    begin_attempt(job.pk)
    in_other_connection(terminate, connection.connection.info.backend_pid)

    engine().release_if_connected(job.pk)
    connection.close()
    assert not job_lock_held(job.pk)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_running_job_whose_worker_connection_is_gone_is_lost_and_run_again(user):
    conversation, job = doomed_conversation(user)
    worker_gone(job.pk)

    again = begin_attempt(job.pk)
    assert (again.attempts, again.last_error_class) == (2, "WorkerLost")
    assert work(again)["deleted"] is True
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_rescuer_retries_a_dead_workers_attempt_and_leaves_a_live_one_alone(user):
    _, dead = doomed_conversation(user)
    _, alive = doomed_conversation(user)
    worker_gone(dead.pk)
    live_attempt = begin_attempt(alive.pk)

    assert rescue("database") == 1
    dead.refresh_from_db()
    assert (dead.status, dead.attempts, dead.last_error_class) == ("retrying", 1, "WorkerLost")
    assert OrmQ.objects.filter(pk=dead.broker_row).exists()
    assert Job.objects.get(pk=alive.pk).status == "running"
    assert rescue("database") == 0
    work(live_attempt)


@pytest.mark.django_db(transaction=True)
def test_the_rescuer_pushes_again_a_waiting_job_whose_broker_row_is_gone(user, settings):
    settings.QUEUE_STRANDED_AFTER = 30
    lost = enqueue("test_sleep", {"user_id": user.pk})
    kept = enqueue("test_sleep", {"user_id": user.pk})
    gone = lost.broker_row
    OrmQ.objects.filter(pk=gone).delete()
    long_ago = timezone.now() - timedelta(minutes=1)
    Job.objects.filter(pk__in=[lost.pk, kept.pk]).update(run_after=long_ago)

    assert rescue("database") == 1  # `kept` still has its row: it just waits its turn
    lost.refresh_from_db()
    assert lost.broker_row != gone and OrmQ.objects.filter(pk=lost.broker_row).exists()
    assert lost.run_after > long_ago
    assert rescue("database") == 0
    run_job(lost.pk)
    assert Job.objects.get(pk=lost.pk).status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_due_job_whose_broker_row_is_gone_is_pushed_again_at_the_next_pass(user):
    """Default QUEUE_STRANDED_AFTER: a row that is gone needs no waiting, only a due job."""
    lost = enqueue("test_sleep", {"user_id": user.pk})
    not_due = enqueue(
        "test_sleep",
        {"user_id": user.pk},
        run_after=timezone.now() + timedelta(hours=1),
    )
    OrmQ.objects.filter(pk__in=[lost.broker_row, not_due.broker_row]).delete()
    assert rescue("database") == 1
    lost.refresh_from_db()
    assert OrmQ.objects.filter(pk=lost.broker_row).exists()
    assert rescue("database") == 0
    run_job(lost.pk)
    assert Job.objects.get(pk=lost.pk).status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_the_rescuer_pushes_again_only_its_own_queues_due_waiting_jobs(user, settings):
    settings.QUEUES = {"database": {}, "other": {}}
    lost = enqueue("test_sleep", {"user_id": user.pk})
    done = enqueue("test_sleep", {"user_id": user.pk})
    run_job(done.pk)
    elsewhere = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=elsewhere.pk).update(queue="other")
    OrmQ.objects.all().delete()  # every delivery is lost

    assert rescue("database") == 1
    assert Job.objects.get(pk=done.pk).broker_row == done.broker_row  # finished: left alone
    assert Job.objects.get(pk=elsewhere.pk).broker_row == elsewhere.broker_row
    lost.refresh_from_db()
    assert OrmQ.objects.filter(pk=lost.broker_row).exists()
    assert rescue("other") == 1


@pytest.mark.django_db
def test_outside_the_database_the_stranded_are_the_jobs_longest_past_due(user, monkeypatch):
    """A broker that cannot be asked (Redis): jobs more than QUEUE_STRANDED_AFTER past due, the
    earliest due first, finished ones never."""
    monkeypatch.setattr(Conf, "BROKER_CLASS", "queues.django_q2.redis_broker.RedisJobBroker")
    now = timezone.now()
    late = now - timedelta(minutes=1)
    due = {}
    for name, minutes in (("later", 2), ("earliest", 5), ("recent", 0.5), ("finished", 9)):
        job = enqueue("test_sleep", {"user_id": user.pk})
        Job.objects.filter(pk=job.pk).update(run_after=now - timedelta(minutes=minutes))
        due[name] = job.pk
    Job.objects.filter(pk=due["finished"]).update(status="succeeded")

    stranded = engine().stranded_jobs("database", now, late, limit=1)
    assert [job.pk for job in stranded] == [due["earliest"]]
    stranded = engine().stranded_jobs("database", now, late, limit=10)
    assert [job.pk for job in stranded] == [due["earliest"], due["later"]]


@contextmanager
def live_pusher(token):
    """A session holding the claims lock of `token`, as a live cluster's pusher does."""
    session = database_session(autocommit=True)
    session.execute("SELECT pg_advisory_lock(%s::int4, %s::int4)", [liveness.CLAIMS, token])
    try:
        yield
    finally:
        session.close()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_rescuer_hands_out_again_only_the_claims_of_dead_clusters(user):
    due = timezone.now() - timedelta(minutes=5)
    dead = OrmQ.objects.create(key="database@555@1", payload="x", lock=due)
    live = OrmQ.objects.create(key="database@777@1", payload="x", lock=due)
    with live_pusher(777):
        assert rescue("database") == 1
    dead.refresh_from_db()
    live.refresh_from_db()
    assert (dead.key, dead.lock) == ("database", due), "back in its place in the queue"
    assert live.key == "database@777@1"


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_an_idle_pusher_asks_whether_to_rescue_in_its_claim_and_rescues_only_then(user, settings):
    """Idle, the rescue's check rides on the pusher's claim; a rescue alone sends one statement."""
    connection.ensure_connection()
    with CaptureQueriesContext(connection) as queries:
        assert rescue("database") == 0
    assert len(queries) == 1, [q["sql"][:60] for q in queries]
    broker = JobBroker("database")
    assert broker._claim(with_rescue_check=True)[2] is False
    dead = OrmQ.objects.create(key="database@555@1", payload="x", lock=timezone.now())
    assert broker._claim()[2] is False  # not asked
    assert broker._claim(with_rescue_check=True)[2] is True
    settings.QUEUE_RESCUE_INTERVAL = 0  # every dequeue asks
    assert broker.dequeue() == []  # rescued: the next dequeue claims it, without waiting
    assert [row_id for row_id, _ in broker.dequeue()] == [dead.pk]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock_all()")


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_job_lost_in_a_worker_killed_before_it_began_is_pushed_again(user, settings):
    """Its row stays claimed by a live cluster, but a claimed job starts within seconds."""
    settings.QUEUE_STRANDED_AFTER = 30
    lost = enqueue("test_sleep", {"user_id": user.pk})
    prefetched = enqueue("test_sleep", {"user_id": user.pk})
    now = timezone.now()
    long_ago = now - timedelta(minutes=1)
    Job.objects.filter(pk__in=[lost.pk, prefetched.pk]).update(run_after=long_ago)
    OrmQ.objects.filter(pk=lost.broker_row).update(key=f"database@777@{int(long_ago.timestamp())}")
    OrmQ.objects.filter(pk=prefetched.broker_row).update(key=f"database@777@{int(now.timestamp())}")
    with live_pusher(777):
        assert rescue("database") == 1
    lost.refresh_from_db()
    assert OrmQ.objects.get(pk=lost.broker_row).key == "database"


def backlog_ahead(user, due):
    """More waiting jobs due before `due` than the rescue looks at for lost rows."""
    ahead = enqueue_many("test_sleep", [{"user_id": user.pk}] * (postgresql.STRANDED_HORIZON + 1))
    Job.objects.filter(pk__in=[job.pk for job in ahead]).update(run_after=due - timedelta(hours=1))
    return ahead


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_job_lost_in_a_killed_worker_is_pushed_again_however_deep_in_the_backlog(user, settings):
    """A claimed row leads to its job directly: how many jobs wait before it does not matter."""
    settings.QUEUE_STRANDED_AFTER = 30
    lost = enqueue("test_sleep", {"user_id": user.pk})
    long_ago = timezone.now() - timedelta(minutes=1)
    Job.objects.filter(pk=lost.pk).update(run_after=long_ago)
    backlog_ahead(user, long_ago)
    OrmQ.objects.filter(pk=lost.broker_row).update(key=f"database@777@{int(long_ago.timestamp())}")
    with live_pusher(777):
        assert rescue("database") == 1
    lost.refresh_from_db()
    assert OrmQ.objects.get(pk=lost.broker_row).key == "database"


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_job_whose_row_is_gone_is_pushed_again_once_it_nears_the_head_of_its_queue(user):
    """The look for rows that are gone is bounded to the longest-due waiting jobs, so it costs
    the same over any backlog; a job further back is found when those ahead of it have run."""
    lost = enqueue("test_sleep", {"user_id": user.pk})
    ahead = backlog_ahead(user, lost.run_after)
    OrmQ.objects.filter(pk=lost.broker_row).delete()
    assert rescue("database") == 0
    Job.objects.filter(pk__in=[job.pk for job in ahead[:2]]).update(status="succeeded")
    assert rescue("database") == 1
    lost.refresh_from_db()
    assert OrmQ.objects.filter(pk=lost.broker_row).exists()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_claim_is_tagged_with_a_token_its_pusher_holds(user):
    enqueue("test_sleep", {"user_id": user.pk})
    broker = JobBroker("database")
    ((row_id, _),) = broker._claim()[0]
    key = OrmQ.objects.get(pk=row_id).key
    token = int(key.split("@")[1])
    assert claims_lock_held(token)
    assert rescue("database") == 0  # its pusher lives
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock_all()")


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_job_costs_a_fixed_number_of_statements(user):
    """Liveness, fencing and counters ride in the begin and finish statements.

    begin: one statement (lock, UPDATE, counters; its own transaction); work: BEGIN, the
    handler's statements (none here), one statement with the fenced UPDATE releasing the lock,
    the counters and (in a real worker) the broker row's DELETE, COMMIT.
    """
    job = enqueue("test_sleep", {"user_id": user.pk})
    connection.ensure_connection()
    with CaptureQueriesContext(connection) as queries:
        run_job(job.pk)
    assert Job.objects.get(pk=job.pk).status == "succeeded"
    assert len(queries) == 4, [q["sql"][:60] for q in queries]


@pytest.mark.django_db
def test_the_sweeper_counts_an_overdue_job_as_not_live(user, settings):
    settings.DELETION_SWEEP_AFTER_SECONDS = 300
    conversation, job = doomed_conversation(user)
    long_ago = timezone.now() - timedelta(minutes=10)
    Conversation.objects.filter(pk=conversation.pk).update(deletion_requested_at=long_ago)
    assert sweep_deletions() == 0  # its job waits, on time
    Job.objects.filter(pk=job.pk).update(run_after=long_ago)  # its delivery was lost
    assert sweep_deletions() == 1


@pytest.mark.django_db
def test_a_finally_failed_deletion_is_shown_to_operators_not_queued_again(
    user, settings, make_user
):
    settings.DELETION_SWEEP_AFTER_SECONDS = 300
    conversation, job = doomed_conversation(user)
    long_ago = timezone.now() - timedelta(minutes=10)
    Conversation.objects.filter(pk=conversation.pk).update(deletion_requested_at=long_ago)
    Job.objects.filter(pk=job.pk).update(status="failed", finished_at=long_ago)

    assert sweep_deletions() == 0
    assert sweep_deletions() == 0  # no loop
    assert Job.objects.filter(subject=job.subject).count() == 1
    assert Conversation.objects.get(pk=conversation.pk).deletion_failed_at is not None

    operator = make_user("operator", is_staff=True)
    grant(operator, "view_conversation", "delete_conversation")
    client = Client()
    client.force_login(operator)
    listing = client.get("/admin/chat/conversation/?deletion_failed_at__isnull=False")
    assert listing.status_code == 200
    assert f"/admin/chat/conversation/{conversation.pk}/change/" in listing.content.decode()
    client.post(
        "/admin/chat/conversation/",
        {"action": "retry_deletion", "_selected_action": [conversation.pk]},
    )
    retried = Job.objects.filter(subject=job.subject, status="queued").get()
    assert retried.request_id.startswith("admin-")  # the operator's request, in the job's logs
    assert Conversation.objects.get(pk=conversation.pk).deletion_failed_at is None
    run_job(retried.pk)
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
