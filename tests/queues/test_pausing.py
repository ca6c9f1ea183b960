"""Pausing a queue: from manage.py, the dashboard and the admin, recorded with who and when;
honoured by the claim and the runner; not a backlog for /readyz, the metrics, the rescuer or the
sweeper. Real clusters: tests/processes/test_operator_controls_cluster.py."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from django_q.models import OrmQ

from chat.models import Conversation
from chat.sweeper import sweep_deletions
from queues.api import enqueue
from queues.core import pausing
from queues.django_q2.broker import JobBroker
from queues.execution.runner import run_job
from queues.maintenance.rescuer import rescue
from queues.models import Job, QueueEvent, QueuePause
from tests.support.users import grant

pytestmark = pytest.mark.django_db

LONG_AGO = timezone.now() - timedelta(hours=1)


@pytest.fixture
def pauser(make_user):

    user = make_user("pauser", is_staff=True)
    return grant(user, "view_job", "pause_queue")


def test_manage_py_pauses_and_resumes_a_queue_and_says_so(user):
    out = StringIO()
    call_command("queue", "pause", "database", stdout=out)
    call_command("queue", "pause", "database", stdout=out)
    call_command("queue", "status", stdout=out)
    call_command("queue", "resume", "database", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["database: paused", "database: already paused"]
    assert lines[2].startswith("database: paused since ")
    assert lines[3] == "database: resumed"
    assert not QueuePause.objects.exists()
    events = list(QueueEvent.objects.order_by("at").values_list("action", "by", "detail"))
    assert [(a, b) for a, b, _ in events] == [("paused", None), ("resumed", None)]
    assert events[0][2].startswith("manage.py queue pause, OS user ")


def test_manage_py_rejects_an_unknown_queue():
    with pytest.raises(CommandError, match="unknown queue 'nope'"):
        call_command("queue", "pause", "nope")
    with pytest.raises(CommandError, match="which queue"):
        call_command("queue", "pause")
    assert not QueuePause.objects.exists()


@pytest.mark.postgres
def test_the_claim_takes_nothing_from_a_paused_queue(user):
    if connection.vendor != "postgresql":
        pytest.skip("the claim statement is PostgreSQL's")
    job = enqueue("test_sleep", {"user_id": user.pk})
    broker = JobBroker("database")
    pausing.pause("database")
    assert broker._claim()[:2] == ([], None)  # and no due time in the past: no busy loop
    pausing.resume("database")
    tasks, _, _ = broker._claim()
    assert [row_id for row_id, _ in tasks] == [job.broker_row]


def test_a_job_claimed_before_the_pause_waits_with_a_broker_row_of_its_own(user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    claimed = job.broker_row
    pausing.pause("database")

    run_job(job.pk)  # a delivery claimed before the pause

    job.refresh_from_db()
    assert (job.status, job.attempts) == ("queued", 0)
    assert job.broker_row != claimed and OrmQ.objects.filter(pk=job.broker_row).exists()
    pausing.resume("database")
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 1)


def test_a_paused_queue_is_shown_as_paused_not_as_a_backlog(
    client, operator_api, operator_user, user, settings
):
    settings.READY_MAX_BACKLOG_SECONDS = 0
    enqueue("delete_conversation", {"user_id": user.pk, "conversation_id": 1})
    Job.objects.update(run_after=LONG_AGO)
    assert "backlog" in client.get("/readyz").json()["failed"]

    pausing.pause("database")

    client.force_login(operator_user)  # the checks' details are for operators
    backlog = client.get("/readyz").json()["checks"]["backlog"]
    assert backlog["ok"] and "paused: database" in backlog["detail"]
    metrics = client.get("/metrics").content.decode()
    assert 'slimy_queue_paused{queue="database"} 1.0' in metrics
    assert 'slimy_queue_oldest_waiting_seconds{queue="database"} 0.0' in metrics
    stats = operator_api.get("/api/queues/stats").json()["queues"]["database"]
    assert stats["paused"] and stats["paused_at"] and stats["oldest_waiting_seconds"] == 0
    pausing.resume("database")
    assert 'slimy_queue_paused{queue="database"} 0.0' in client.get("/metrics").content.decode()


def test_the_rescuer_leaves_a_paused_queues_jobs_alone(user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    OrmQ.objects.all().delete()  # its delivery is lost, and it is long past due
    Job.objects.filter(pk=job.pk).update(run_after=LONG_AGO)
    pausing.pause("database")
    assert rescue("database") == 0
    assert rescue("database") == 0
    pausing.resume("database")
    assert rescue("database") == 1  # after the resume, the lost delivery is replaced


def test_the_sweeper_counts_a_paused_queues_waiting_deletion_as_live(user, settings):
    settings.DELETION_SWEEP_AFTER_SECONDS = 300
    conversation = Conversation.objects.create(owner=user, title="t")
    from chat.services import request_conversation_deletion

    job = request_conversation_deletion(conversation, request_id="r")
    Conversation.objects.filter(pk=conversation.pk).update(deletion_requested_at=LONG_AGO)
    Job.objects.filter(pk=job.pk).update(run_after=LONG_AGO)
    pausing.pause("database")
    assert sweep_deletions() == 0
    pausing.resume("database")
    assert sweep_deletions() == 1  # not paused: that late, its delivery counts as lost


def test_an_operator_pauses_from_the_dashboard_only_once_confirmed_and_resumes_at_once(
    client, pauser
):
    client.force_login(pauser)
    page = client.get("/dashboard/queues").content.decode()
    assert 'class="pause"' in page
    asked = client.get("/dashboard/queues/database/pause").content.decode()
    assert "Pause queue “database”?" in asked and 'name="confirm" value="yes"' in asked

    for unconfirmed in ({"action": "pause"}, {"action": "pause", "confirm": "no"}, {}):
        response = client.post("/dashboard/queues/database/pause", unconfirmed)
        assert response.status_code == 200
        assert 'class="confirm-pause"' in response.content.decode()
    assert not QueuePause.objects.exists() and not QueueEvent.objects.exists()

    confirmed = {"action": "pause", "confirm": "yes"}
    response = client.post("/dashboard/queues/database/pause", confirmed, follow=True)

    assert "Queue database paused" in response.content.decode()
    assert 'class="resume"' in response.content.decode()
    assert QueuePause.objects.get().paused_by == pauser
    client.post("/dashboard/queues/database/pause", {"action": "resume"})
    assert not QueuePause.objects.exists()
    assert list(QueueEvent.objects.order_by("at").values_list("action", "by")) == [
        ("paused", pauser.pk),
        ("resumed", pauser.pk),
    ]
    assert client.post("/dashboard/queues/nope/pause").status_code == 404


def test_one_who_may_only_pause_lands_on_a_page_they_may_see(client, make_user):

    only_pauser = make_user("only-pauser", is_staff=True)
    grant(only_pauser, "pause_queue")
    client.force_login(only_pauser)

    confirm = client.get("/dashboard/queues/database/pause").content.decode()
    assert "Pause queue" in confirm and "waiting" not in confirm  # no job counts either
    assert 'href="/dashboard/queues"' not in confirm  # its way back is a page they may see
    paused = client.post(
        "/dashboard/queues/database/pause", {"action": "pause", "confirm": "yes"}, follow=True
    )
    assert paused.status_code == 200 and "Queue database paused" in paused.content.decode()
    assert paused.redirect_chain[-1][0] == "/admin/queues/queuepause/"
    resumed = client.post("/dashboard/queues/database/pause", {"action": "resume"}, follow=True)
    assert resumed.status_code == 200 and "Queue database resumed" in resumed.content.decode()
    added = client.post("/admin/queues/queuepause/add/", {"queue": "database"}, follow=True)
    assert added.status_code == 200 and QueuePause.objects.filter(queue="database").exists()
    assert client.get("/dashboard/queues").status_code == 403  # jobs stay out of sight


def test_pausing_needs_its_permission_not_staff_status(client, operator_user, staff_user):
    for user in (staff_user, operator_user):
        client.force_login(user)
        confirmed = {"action": "pause", "confirm": "yes"}
        assert client.post("/dashboard/queues/database/pause", confirmed).status_code == 403
        assert client.get("/dashboard/queues/database/pause").status_code == 403
        assert client.get("/admin/queues/queuepause/add/").status_code == 403
    assert not QueuePause.objects.exists()


def test_an_operator_pauses_and_resumes_from_the_admin(client, pauser):
    client.force_login(pauser)
    response = client.post("/admin/queues/queuepause/add/", {"queue": "database"}, follow=True)
    assert response.status_code == 200
    assert QueuePause.objects.get().paused_by == pauser
    again = client.post("/admin/queues/queuepause/add/", {"queue": "database"})
    assert again.status_code == 200 and "already exists" in again.content.decode()
    bad = client.post("/admin/queues/queuepause/add/", {"queue": "nope"})
    assert bad.status_code == 200 and not QueuePause.objects.filter(queue="nope").exists()

    client.post(
        "/admin/queues/queuepause/",
        {"action": "resume_selected", "_selected_action": ["database"]},
    )

    assert not QueuePause.objects.exists()
    assert client.get("/admin/queues/queueevent/").status_code == 200
    assert QueueEvent.objects.filter(action="resumed", by=pauser).exists()
