"""Cancelling jobs: the owner's waiting job through the API, any job for holders of
`queues.change_job` (API, admin, dashboard), a stop asked of a running job, and the job's history
of who did what, when."""

import pytest
from django.utils import timezone

from chat.models import Conversation
from queues.api import enqueue
from queues.errors import JobCancelled
from queues.execution.cancellation import cancel_jobs, raise_if_stop_requested
from queues.execution.runner import begin_attempt, record_stopped, run_job, work
from queues.models import Job, JobEvent
from tests.support.clients import token_client
from tests.support.jobs import counted
from tests.support.users import grant

pytestmark = pytest.mark.django_db


def cancel_url(job):
    return f"/api/queues/jobs/{job.pk}/cancel"


def test_the_owner_cancels_a_waiting_job_which_then_never_runs(api, user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    waiting_before = counted("waiting")

    response = api.post(cancel_url(job))

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and body["cancel_requested_at"]
    assert [(e["action"], e["by"]) for e in body["history"]] == [("cancelled", user.username)]
    job.refresh_from_db()
    assert (job.status, job.cancel_requested_by, job.attempts) == ("cancelled", user, 0)
    assert job.finished_at is not None
    assert counted("cancelled") == 1 and counted("waiting") == waiting_before - 1
    run_job(job.pk)  # its broker row remains: a delivery of a finished job does nothing
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("cancelled", 0)


def test_someone_elses_job_is_a_404_like_a_missing_one(other_api, user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    foreign = other_api.post(cancel_url(job))
    missing = other_api.post("/api/queues/jobs/00000000-0000-0000-0000-000000000000/cancel")
    malformed = other_api.post("/api/queues/jobs/nope/cancel")
    assert foreign.status_code == missing.status_code == malformed.status_code == 404
    assert foreign.content == missing.content == malformed.content
    assert Job.objects.get(pk=job.pk).status == "queued"


def test_staff_status_alone_cancels_nothing(client, staff_user, user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    assert token_client(staff_user).post(cancel_url(job)).status_code == 404
    client.force_login(staff_user)
    assert client.post(f"/dashboard/queues/jobs/{job.pk}/cancel").status_code == 403
    response = client.post(
        "/admin/queues/job/", {"action": "cancel_selected", "_selected_action": [job.pk]}
    )
    assert response.status_code == 403
    assert Job.objects.get(pk=job.pk).status == "queued"


def test_a_viewer_of_others_jobs_may_not_cancel_them(make_user, user):

    viewer = make_user("viewer", is_staff=True)
    grant(viewer, "view_job")
    job = enqueue("test_sleep", {"user_id": user.pk})
    response = token_client(viewer).post(cancel_url(job))
    assert response.status_code == 403 and response.json()["error"]
    assert Job.objects.get(pk=job.pk).status == "queued"


def test_a_finished_job_is_a_409(api, user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    run_job(job.pk)
    response = api.post(cancel_url(job))
    assert response.status_code == 409
    assert response.json()["error"] == "job_finished"
    assert Job.objects.get(pk=job.pk).status == "succeeded"


def test_the_owner_cannot_stop_a_running_job_an_operator_can(
    api, operator_api, user, operator_user
):
    job = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=job.pk).update(status="running", attempts=1)

    mine = api.post(cancel_url(job))
    assert mine.status_code == 409 and mine.json()["error"] == "job_running"

    asked = operator_api.post(cancel_url(job))
    assert asked.status_code == 202
    assert asked.json()["status"] == "running" and asked.json()["cancel_requested_at"]
    assert operator_api.post(cancel_url(job)).status_code == 202  # asking again changes nothing
    job.refresh_from_db()
    assert job.cancel_requested_by == operator_user
    assert list(job.events.values_list("action", "by")) == [("cancel_requested", operator_user.pk)]
    # The owner sees that an operator acted, not who.
    assert [
        (e["action"], e["by"]) for e in api.get(f"/api/queues/jobs/{job.pk}").json()["history"]
    ] == [("cancel_requested", None)]


def test_a_handler_that_checks_stops_and_its_work_rolls_back(user):
    job = enqueue("test_stoppable", {"user_id": user.pk, "seconds": 5})
    # The request lands once the attempt has begun (as a concurrent operator's would).
    Job.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())

    run_job(job.pk)

    job.refresh_from_db()
    assert (job.status, job.attempts) == ("cancelled", 1)
    assert job.finished_at is not None
    assert not Conversation.objects.filter(title="written by test_stoppable").exists()
    assert list(job.events.values_list("action", flat=True)) == ["stopped"]
    assert counted("cancelled", "test_stoppable") == 1 and counted("running", "test_stoppable") == 0


@pytest.mark.django_db(transaction=True)
def test_a_stop_an_operator_asks_of_a_running_job_is_recorded_as_theirs(
    operator_api, operator_user, user, caplog
):
    job = enqueue("test_stoppable", {"user_id": user.pk, "seconds": 5})
    running = begin_attempt(job.pk)
    assert operator_api.post(cancel_url(job)).status_code == 202

    # What `run_job` does with the attempt: the handler sees the request at its first check.
    with pytest.raises(JobCancelled):
        work(running)
    record_stopped(running)

    job.refresh_from_db()
    assert (job.status, job.attempts) == ("cancelled", 1)
    assert list(job.events.order_by("pk").values_list("action", "by")) == [
        ("cancel_requested", operator_user.pk),
        ("stopped", operator_user.pk),
    ]
    assert "job stopped by its handler at a stop request; cancelled" in caplog.messages


def test_a_cancelled_job_that_never_ran_keeps_no_content(api, operator_user, user):
    """Nothing will ever use a cancelled job's title or message: it is erased with the cancel,
    not kept until retention or the user's deletion."""
    mine = enqueue("create_conversation", {"user_id": user.pk, "title": "Secret 1"})
    theirs = enqueue("create_conversation", {"user_id": user.pk, "title": "Secret 2"})
    kept = enqueue("create_conversation", {"user_id": user.pk, "title": "Kept"})

    assert api.post(cancel_url(mine)).json()["data"] == {
        "user_id": user.pk,
        "request_id": mine.request_id,
    }
    cancel_jobs(Job.objects.filter(pk=theirs.pk), by=operator_user)

    for job in (mine, theirs):
        job.refresh_from_db()
        assert job.status == "cancelled" and "title" not in job.data
    assert Job.objects.get(pk=kept.pk).data["title"] == "Kept"  # live: still to run


def test_a_job_stopped_at_a_stop_request_keeps_no_content(user):
    job = enqueue("test_stoppable", {"user_id": user.pk, "note": "private words"})
    Job.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    run_job(job.pk)
    job.refresh_from_db()
    assert job.status == "cancelled" and "note" not in job.data


def test_a_handler_that_ignores_a_stop_request_finishes_normally(user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    run_job(job.pk)
    assert Job.objects.get(pk=job.pk).status == "succeeded"


def test_the_check_does_nothing_outside_a_job(user, django_assert_num_queries):
    job = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    with django_assert_num_queries(0):  # no job of this process runs: nothing to look up
        assert raise_if_stop_requested() is None


def test_an_operator_cancels_from_the_admin_and_sees_the_history(client, operator_user, user):
    client.force_login(operator_user)
    waiting = enqueue("test_sleep", {"user_id": user.pk})
    running = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=running.pk).update(status="running", attempts=1)
    done = enqueue("test_sleep", {"user_id": user.pk})
    run_job(done.pk)

    response = client.post(
        "/admin/queues/job/",
        {"action": "cancel_selected", "_selected_action": [waiting.pk, running.pk, done.pk]},
        follow=True,
    )

    messages = [str(m) for m in response.context["messages"]]
    assert "1 waiting job(s) cancelled." in messages
    assert any(m.startswith("1 running job(s) asked to stop") for m in messages)
    assert any(m.startswith("1 job(s) had finished") for m in messages)
    assert Job.objects.get(pk=waiting.pk).status == "cancelled"
    page = client.get(f"/admin/queues/job/{waiting.pk}/change/").content.decode()
    inline = page[page.index('id="events-group"') :]
    assert "cancelled" in inline and operator_user.username in inline


def test_an_operator_cancels_from_the_dashboard(client, operator_user, user):
    client.force_login(operator_user)
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    run_job(job.pk)
    assert Job.objects.get(pk=job.pk).status == "retrying"
    page = client.get("/dashboard/queues").content.decode()
    assert f"/dashboard/queues/jobs/{job.pk}/cancel" in page

    response = client.post(f"/dashboard/queues/jobs/{job.pk}/cancel", follow=True)

    assert f"Job {job.pk} cancelled." in response.content.decode()
    assert Job.objects.get(pk=job.pk).status == "cancelled"
    assert JobEvent.objects.get(job_id=job.pk).by == operator_user


def test_an_operator_retry_is_in_the_history(operator_api, operator_user, user):
    job = enqueue("test_permanent", {"user_id": user.pk})
    run_job(job.pk)
    assert operator_api.post(f"/api/queues/jobs/{job.pk}/retry").status_code == 200
    history = operator_api.get(f"/api/queues/jobs/{job.pk}").json()["history"]
    assert [(e["action"], e["by"]) for e in history] == [("retried", operator_user.username)]


def test_history_is_written_with_the_action_or_not_at_all(user, monkeypatch):
    job = enqueue("test_sleep", {"user_id": user.pk})

    def broken(*args, **kwargs):
        raise RuntimeError("counters down")

    monkeypatch.setattr("queues.engine.counters.jobs_cancelled", broken)
    with pytest.raises(RuntimeError):
        cancel_jobs(Job.objects.filter(pk=job.pk), by=user)
    assert Job.objects.get(pk=job.pk).status == "queued"
    assert not JobEvent.objects.exists()


def test_pruned_jobs_take_their_history_with_them(user, settings):
    from queues.maintenance.periodic import prune

    settings.JOB_RETENTION = {"succeeded": 0, "failed": 0, "cancelled": 0}
    job = enqueue("test_sleep", {"user_id": user.pk})
    cancel_jobs(Job.objects.filter(pk=job.pk), by=user)
    assert JobEvent.objects.count() == 1
    prune()
    assert not Job.objects.filter(pk=job.pk).exists() and not JobEvent.objects.exists()


def test_chat_internal_cancellation_still_withdraws_waiting_jobs(user):
    from queues.api import cancel_waiting_jobs

    conversation = Conversation.objects.create(owner=user, title="t")
    job = enqueue(
        "save_message",
        {"conversation_id": conversation.pk, "user_id": user.pk, "role": "user", "content": "x"},
    )
    assert cancel_waiting_jobs(job.subject, "save_message") == 1
    job.refresh_from_db()
    assert job.status == "cancelled" and job.finished_at is not None
    assert (counted("cancelled", "save_message"), counted("waiting", "save_message")) == (1, 0)
