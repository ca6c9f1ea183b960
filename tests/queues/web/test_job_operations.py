"""What users and operators do with jobs: status endpoint, enqueue API, admin retry, commands,
the deletion sweeper."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from django_q.models import OrmQ

from chat.jobs import CHECK_STOP_AFTER_MESSAGES
from chat.models import Conversation, Message
from chat.services import request_conversation_deletion
from chat.sweeper import sweep_deletions
from queues.api import enqueue
from queues.execution.runner import run_job
from queues.models import Job
from tests.support.data import make_conversation

pytestmark = pytest.mark.django_db


def test_job_status_shows_its_owner_the_outcome_but_not_the_traceback(api, failed_job):
    """Who else may see it: test_access.py; odd job ids: test_hostile_input.py (both here)."""
    mine = api.get(f"/api/queues/jobs/{failed_job.pk}")
    assert mine.status_code == 200
    assert mine.json()["status"] == "failed"
    assert mine.json()["last_error"] == "simulated bad data"
    assert "traceback" not in mine.json()


def test_jobs_can_be_enqueued_through_the_api_as_yourself(api, user, other_user):
    conversation = Conversation.objects.create(owner=user, title="t")
    response = api.post(
        "/api/queues/jobs",
        {
            "queue": "database",
            "type": "save_message",
            "data": {"conversation_id": conversation.pk, "role": "user", "content": "hi"},
        },
        format="json",
    )
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.json()["user_id"] == user.pk


@pytest.mark.parametrize(
    "body",
    [
        {"queue": "database", "type": "nope", "data": {}},
        {"queue": "elsewhere", "type": "save_message", "data": {}},
        {"queue": "database", "type": "save_message", "data": {"conversation_id": "x"}},
        {"queue": "database", "type": "save_message", "data": []},
        {"queue": "database", "type": "save_message"},
    ],
)
def test_bad_jobs_from_the_api_get_a_400_and_store_nothing(api, body):
    response = api.post("/api/queues/jobs", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    assert Job.objects.count() == 0


def test_admin_retry_action_requeues_failed_jobs_and_records_who(
    client, superuser, failed_job, user
):
    client.force_login(superuser)
    succeeded = enqueue("test_sleep", {"user_id": user.pk})
    run_job(succeeded.id)
    OrmQ.objects.all().delete()

    response = client.post(
        "/admin/queues/job/",
        {"action": "retry_selected", "_selected_action": [failed_job.pk, succeeded.pk]},
        follow=True,
    )

    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    assert "1 failed job(s) sent back to their queue." in messages
    assert "1 job(s) were not failed and were left alone." in messages
    failed_job.refresh_from_db()
    assert failed_job.status == "queued"
    assert failed_job.max_attempts == failed_job.attempts + 3
    assert failed_job.retried_by == superuser
    assert Job.objects.get(pk=succeeded.pk).status == "succeeded"
    assert OrmQ.objects.count() == 1
    run_job(failed_job.pk)
    assert Job.objects.get(pk=failed_job.pk).attempts == 2


def test_admin_jobs_page_filters_and_finds_jobs_by_conversation_id(client, superuser, user):
    client.force_login(superuser)
    conversation = Conversation.objects.create(owner=user, title="t")
    job = enqueue("delete_conversation", {"user_id": user.pk, "conversation_id": conversation.pk})
    found = client.get("/admin/queues/job/", {"q": str(conversation.pk), "status": "queued"})
    assert found.status_code == 200
    assert list(found.context["cl"].result_list) == [job]
    by_request = client.get("/admin/queues/job/", {"q": job.request_id})
    assert list(by_request.context["cl"].result_list) == [job]
    detail = client.get(f"/admin/queues/job/{job.pk}/change/")
    assert detail.status_code == 200


def test_queue_stats_and_retry_failed_commands(failed_job, user):
    out = StringIO()
    call_command("queue_stats", stdout=out)
    header, row = out.getvalue().splitlines()
    assert header.split() == ["queue", *Job.Status.values]
    assert row.split()[0] == "database"
    assert row.split()[1 + Job.Status.values.index("failed")] == "1"

    out = StringIO()
    call_command("retry_failed", "--type", "delete_conversation", stdout=out)
    assert "retried 0" in out.getvalue()
    call_command("retry_failed", "--queue", "database", stdout=out)
    assert "retried 1" in out.getvalue()
    assert Job.objects.get(pk=failed_job.pk).status == "queued"


def test_sweeper_requeues_stale_deletions_that_have_no_live_job(user, settings):
    settings.DELETION_SWEEP_AFTER_SECONDS = 300
    long_ago = timezone.now() - timedelta(minutes=10)
    orphaned = Conversation.objects.create(owner=user, title="lost job")
    tracked = Conversation.objects.create(owner=user, title="job waiting")
    recent = Conversation.objects.create(owner=user, title="just asked")
    Conversation.objects.filter(pk__in=[orphaned.pk, tracked.pk]).update(
        deletion_requested_at=long_ago
    )
    Conversation.objects.filter(pk=recent.pk).update(deletion_requested_at=timezone.now())
    enqueue("delete_conversation", {"user_id": user.pk, "conversation_id": tracked.pk})

    assert sweep_deletions() == 1
    requeued = Job.objects.get(subject=f"conversation:{orphaned.pk}")
    assert requeued.request_id.startswith("sweeper-")
    assert sweep_deletions() == 0  # now it has a live job
    run_job(requeued.pk)
    assert not Conversation.objects.filter(pk=orphaned.pk).exists()


# Each way an operator retries a failed job: (name, how, given the operator's client and API).
RETRY_PATHS = {
    "admin": lambda web, api, job: web.post(
        "/admin/queues/job/", {"action": "retry_selected", "_selected_action": [job.pk]}
    ),
    "dashboard": lambda web, api, job: web.post(f"/dashboard/queues/jobs/{job.pk}/retry"),
    "dashboard bulk": lambda web, api, job: web.post(
        "/dashboard/queues/jobs/bulk", {"action": "retry", "scope": "selected", "job": [job.pk]}
    ),
    "api": lambda web, api, job: api.post(f"/api/queues/jobs/{job.pk}/retry"),
    "command": lambda web, api, job: call_command("retry_failed", stdout=StringIO()),
}


def stopped_then_failed_deletion(user, operator_api):
    """A large deletion an operator asked to stop while it ran, whose attempt then failed for
    good before its check: the state the runner leaves."""
    conversation = make_conversation(user, messages=CHECK_STOP_AFTER_MESSAGES + 1)
    job = request_conversation_deletion(conversation, request_id="stopped-then-failed")
    Job.objects.filter(pk=job.pk).update(status="running", attempts=1)
    assert operator_api.post(f"/api/queues/jobs/{job.pk}/cancel").status_code == 202
    Job.objects.filter(pk=job.pk).update(
        status="failed", max_attempts=1, finished_at=timezone.now(), last_error="outage"
    )
    return conversation, job


@pytest.mark.parametrize("path", RETRY_PATHS)
def test_an_operators_retry_runs_afresh_whatever_stop_was_asked_before(
    path, user, operator_user, operator_api
):
    conversation, job = stopped_then_failed_deletion(user, operator_api)
    web = Client()
    web.force_login(operator_user)

    RETRY_PATHS[path](web, operator_api, job)

    job.refresh_from_db()
    assert (job.status, job.cancel_requested_at, job.cancel_requested_by) == ("queued", None, None)
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
    # The history keeps the old request beside the retry.
    assert list(job.events.values_list("action", flat=True)) == ["cancel_requested", "retried"]


def test_a_failed_deletion_retried_from_its_job_and_stopped_again_is_swept_again(
    user, operator_api, settings
):
    """The sweeper stops watching a conversation whose deletion failed for good; retried from
    the job, not the conversation, it watches it again, so a retry that ends cancelled (an
    operator stopped it) or lost is queued again: the deletion the user asked for happens."""
    settings.DELETION_SWEEP_AFTER_SECONDS = 300
    conversation, job = stopped_then_failed_deletion(user, operator_api)
    long_ago = timezone.now() - timedelta(minutes=10)
    Conversation.objects.filter(pk=conversation.pk).update(deletion_requested_at=long_ago)
    assert sweep_deletions() == 0
    assert Conversation.objects.get(pk=conversation.pk).deletion_failed_at is not None

    assert operator_api.post(f"/api/queues/jobs/{job.pk}/retry").status_code == 200
    assert sweep_deletions() == 0  # its retry is live
    assert Conversation.objects.get(pk=conversation.pk).deletion_failed_at is None
    assert operator_api.post(f"/api/queues/jobs/{job.pk}/cancel").json()["status"] == "cancelled"

    assert sweep_deletions() == 1
    again = Job.objects.get(subject=job.subject, status="queued")
    run_job(again.pk)
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
