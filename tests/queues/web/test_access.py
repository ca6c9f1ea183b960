"""Who may do what: every endpoint for anonymous, owner, another user, staff with no
permissions, and an operator (staff holding queues.view_job and queues.change_job)."""

import os
import subprocess
import sys

import pytest
from rest_framework.test import APIClient

from chat.models import Conversation, Message
from queues.api import enqueue
from queues.execution.runner import run_job
from queues.models import Job
from tests.support.clients import enqueue_via_api, token_client
from tests.support.users import grant

pytestmark = pytest.mark.django_db

C = "/api/chat/conversations"

# (method, path, body, {role: expected status}); {conv} is the owner's conversation and {job}
# the owner's (queued) job. Nobody gets a special view of conversations; `is_staff` alone gives
# nothing but the admin's (empty) index, operators see jobs.
TABLE = [
    ("get", C, None, {"anonymous": 401, "owner": 200, "other": 200, "staff": 200, "operator": 200}),
    (
        "post",
        C,
        {"title": "New"},
        {"anonymous": 401, "owner": 201, "other": 201, "staff": 201, "operator": 201},
    ),
    (
        "get",
        C + "/{conv}",
        None,
        {"anonymous": 401, "owner": 200, "other": 404, "staff": 404, "operator": 404},
    ),
    (
        "patch",
        C + "/{conv}",
        {"title": "Renamed"},
        {"anonymous": 401, "owner": 200, "other": 404, "staff": 404, "operator": 404},
    ),
    (
        "get",
        C + "/{conv}/messages",
        None,
        {"anonymous": 401, "owner": 200, "other": 404, "staff": 404, "operator": 404},
    ),
    (
        "post",
        C + "/{conv}/messages",
        {"role": "user", "content": "hi"},
        {"anonymous": 401, "owner": 201, "other": 404, "staff": 404, "operator": 404},
    ),
    (
        "delete",
        C + "/{conv}",
        None,
        {"anonymous": 401, "owner": 200, "other": 404, "staff": 404, "operator": 404},
    ),
    (
        "get",
        "/api/queues/jobs/{job}",
        None,
        {"anonymous": 401, "owner": 200, "other": 404, "staff": 404, "operator": 200},
    ),
    (
        "get",
        "/api/queues/jobs",
        None,
        {"anonymous": 401, "owner": 200, "other": 200, "staff": 200, "operator": 200},
    ),
    (
        "post",
        "/api/queues/jobs",
        {"queue": "database", "type": "test_sleep", "data": {}},
        {"anonymous": 401, "owner": 202, "other": 202, "staff": 202, "operator": 202},
    ),
    (
        "post",
        "/api/queues/jobs/{job}/retry",
        None,
        {"anonymous": 401, "owner": 403, "other": 403, "staff": 403, "operator": 409},
    ),
    (
        "post",
        "/dashboard/queues/jobs/{job}/retry",
        None,
        {"anonymous": 302, "owner": 302, "other": 302, "staff": 403, "operator": 302},
    ),
    (
        "post",
        "/api/queues/jobs/{job}/cancel",
        None,
        {"anonymous": 401, "owner": 200, "other": 404, "staff": 404, "operator": 200},
    ),
    (
        "post",
        "/dashboard/queues/jobs/{job}/cancel",
        None,
        {"anonymous": 302, "owner": 302, "other": 302, "staff": 403, "operator": 302},
    ),
    (
        "post",
        "/dashboard/queues/database/pause",
        None,
        # Pausing takes queues.pause_queue, which this operator (view + change) lacks.
        {"anonymous": 302, "owner": 302, "other": 302, "staff": 403, "operator": 403},
    ),
    (
        "get",
        "/api/queues/stats",
        None,
        {"anonymous": 401, "owner": 403, "other": 403, "staff": 403, "operator": 200},
    ),
    (
        "get",
        "/admin/",
        None,
        {"anonymous": 302, "owner": 302, "other": 302, "staff": 200, "operator": 200},
    ),
    (
        "get",
        "/dashboard/queues",
        None,
        {"anonymous": 302, "owner": 302, "other": 302, "staff": 403, "operator": 200},
    ),
    (
        "get",
        "/dashboard/queues/jobs",
        None,
        {"anonymous": 302, "owner": 302, "other": 302, "staff": 200, "operator": 200},
    ),
    (  # no action named: forbidden without any bulk permission, else a form error
        "post",
        "/dashboard/queues/jobs/bulk",
        None,
        {"anonymous": 302, "owner": 302, "other": 302, "staff": 403, "operator": 400},
    ),
    (
        "get",
        "/healthz",
        None,
        {"anonymous": 200, "owner": 200, "other": 200, "staff": 200, "operator": 200},
    ),
]


@pytest.fixture
def clients(user, other_user, staff_user, operator_user):
    def session(u):
        client = APIClient()
        client.force_login(u)
        return client

    return {
        "anonymous": (APIClient(), APIClient()),
        "owner": (token_client(user), session(user)),
        "other": (token_client(other_user), session(other_user)),
        "staff": (token_client(staff_user), session(staff_user)),
        "operator": (token_client(operator_user), session(operator_user)),
    }


@pytest.mark.parametrize(
    "method, path, body, expected", TABLE, ids=[f"{m} {p}" for m, p, *_ in TABLE]
)
@pytest.mark.parametrize("role", ["anonymous", "owner", "other", "staff", "operator"])
def test_each_endpoint_answers_each_role_as_the_table_says(
    clients, user, role, method, path, body, expected
):
    conversation = Conversation.objects.create(owner=user, title="Owned")
    Message.objects.create(conversation=conversation, role="user", content="hello")
    job = enqueue("test_sleep", {"user_id": user.pk})
    url = path.format(conv=conversation.pk, job=job.pk)
    token, session = clients[role]
    # The admin and the dashboard are browser pages: signed in through the session, not a token.
    client = session if url.startswith(("/admin/", "/dashboard/")) else token
    response = getattr(client, method)(url, body, format="json")
    assert response.status_code == expected[role], response.content
    if response.status_code == 401:
        assert response.json()["error"] == "not_authenticated"
    if response.status_code in (401, 404):  # nobody learns whether the thing exists
        missing_url = path.format(conv=987654321, job="00000000-0000-0000-0000-000000000000")
        missing = getattr(client, method)(missing_url, body, format="json")
        assert response.content == missing.content
    if expected[role] >= 400:
        conversation.refresh_from_db()
        assert conversation.title == "Owned" and conversation.deletion_requested_at is None
        assert conversation.messages.count() == 1


@pytest.mark.parametrize(
    "role, sees",
    [("owner", "content"), ("other", None), ("staff", None), ("operator", "size")],
)
def test_the_job_list_shows_each_role_what_the_jobs_own_page_does(clients, user, role, sees):
    """The owner sees the job with its content, an operator (`queues.view_job`) with its
    content's size, anyone else not at all: whatever they filter on."""
    conversation = Conversation.objects.create(owner=user, title="Owned")
    data = {"conversation_id": conversation.pk, "role": "user", "content": "private words"}
    job = enqueue("save_message", {"user_id": user.pk, **data})
    token, _ = clients[role]
    for query in ({}, {"subject": job.subject}, {"q": str(job.pk)}, {"user": user.username}):
        listed = token.get("/api/queues/jobs", query).json()["results"]
        if sees is None:
            assert listed == [], query
            continue
        (shown,) = listed
        assert shown == token.get(f"/api/queues/jobs/{job.pk}").json()
        content = "private words" if sees == "content" else "[13 chars]"
        assert shown["data"]["content"] == content


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("post", C, {"title": "x"}),
        ("patch", C + "/{conv}", {"title": "x"}),
        ("delete", C + "/{conv}", None),
        ("post", C + "/{conv}/messages", {"role": "user", "content": "x"}),
        ("post", "/api/queues/jobs", {"queue": "database", "type": "test_sleep", "data": {}}),
    ],
)
def test_unsafe_session_requests_without_a_csrf_token_are_refused(user, method, path, body):
    conversation = Conversation.objects.create(owner=user, title="Owned")
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    response = getattr(client, method)(path.format(conv=conversation.pk), body, format="json")
    assert response.status_code == 403
    assert response.json()["error"] == "permission_denied"
    assert "CSRF" in response.json()["detail"]
    conversation.refresh_from_db()
    assert conversation.title == "Owned" and conversation.deletion_requested_at is None
    assert Job.objects.count() == 0 and Conversation.objects.count() == 1


def test_a_session_delete_with_the_csrf_token_works(user, conversation):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/admin/login/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.delete(f"/api/chat/conversations/{conversation.pk}", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200 and response.json()["ok"] is True
    job = Job.objects.get(pk=response.json()["job_id"])
    assert (job.job_type, job.data["conversation_id"]) == ("delete_conversation", conversation.pk)
    conversation.refresh_from_db()
    assert conversation.deletion_requested_at is not None


@pytest.mark.parametrize("job_type", ["delete_conversation", "test_fails_once", "no_such_type"])
def test_clients_enqueue_declared_job_types_only(user, api, job_type):
    conversation = Conversation.objects.create(owner=user, title="Mine")
    response = enqueue_via_api(api, job_type, {"conversation_id": conversation.pk})
    assert response.status_code == 400
    unknown = f"unknown job type '{job_type}' on queue 'database'"
    assert response.json()["fields"] == {"data": [unknown]}
    assert Job.objects.count() == 0
    conversation.refresh_from_db()
    assert conversation.deletion_requested_at is None


def test_a_job_about_someone_elses_conversation_ends_like_one_about_a_missing_one(
    user, other_user, other_api
):
    conversation = Conversation.objects.create(owner=user, title="Not bob's")
    outcomes = []
    for conversation_id in (conversation.pk, 987654321):
        data = {"conversation_id": conversation_id, "role": "user", "content": "sneaky"}
        response = enqueue_via_api(other_api, "save_message", data)
        assert response.status_code == 202
        run_job(response.json()["id"])
        body = other_api.get(f"/api/queues/jobs/{response.json()['id']}").json()
        assert body["data"].pop("conversation_id") == conversation_id
        body["data"].pop("request_id")
        body["last_error"] = body["last_error"].replace(f"conversation {conversation_id} ", "")
        for when in ("id", "request_id", "created_at", "started_at", "finished_at", "run_after"):
            body.pop(when)
        outcomes.append(body)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]["status"] == "failed"
    assert "content" not in outcomes[0]["data"]  # a job whose conversation is gone keeps none
    assert conversation.messages.count() == 0


def test_job_content_is_shown_to_its_owner_only_superusers_included(
    user, api, operator_api, make_user
):
    conversation = Conversation.objects.create(owner=user, title="Mine")
    text = "é" * 1204
    job_id = enqueue_via_api(
        api, "save_message", {"conversation_id": conversation.pk, "role": "user", "content": text}
    ).json()["id"]
    assert api.get(f"/api/queues/jobs/{job_id}").json()["data"]["content"] == text
    root = make_user("root", is_staff=True, is_superuser=True)
    for viewer in (operator_api, token_client(root)):
        shown = viewer.get(f"/api/queues/jobs/{job_id}").json()["data"]
        assert shown["content"] == "[1,204 chars]"
        assert shown["conversation_id"] == conversation.pk
    admin = APIClient()
    admin.force_login(root)
    page = admin.get(f"/admin/queues/job/{job_id}/change/").content.decode()
    assert "[1,204 chars]" in page and text not in page
    assert Job.objects.get(pk=job_id).data["content"] == text  # redacted on display only


def test_retry_needs_change_job_on_the_api_the_dashboard_and_the_admin(
    user, operator_user, make_user
):

    job = enqueue("test_permanent", {"user_id": user.pk})
    run_job(job.pk)
    viewer = make_user("viewer", is_staff=True)
    grant(viewer, "view_job")
    session = APIClient()
    session.force_login(viewer)
    assert token_client(viewer).post(f"/api/queues/jobs/{job.pk}/retry").status_code == 403
    assert session.post(f"/dashboard/queues/jobs/{job.pk}/retry").status_code == 403
    page = session.get("/dashboard/queues").content.decode()
    assert str(job.pk) in page and 'class="retry"' not in page
    action = {"action": "retry_selected", "_selected_action": [job.pk]}
    session.post("/admin/queues/job/", action)
    assert Job.objects.get(pk=job.pk).status == "failed"

    retried = token_client(operator_user).post(f"/api/queues/jobs/{job.pk}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    assert Job.objects.get(pk=job.pk).retried_by == operator_user
    again = token_client(operator_user).post(f"/api/queues/jobs/{job.pk}/retry")
    assert again.status_code == 409 and again.json()["error"] == "job_not_failed"


@pytest.mark.parametrize(
    "job_type, data",
    [
        ("test_sleep", {}),
        ("save_message", {"conversation_id": 1, "role": "user", "content": "hi"}),
    ],
)
def test_a_job_cannot_be_enqueued_in_another_users_name(user, other_api, job_type, data):
    response = enqueue_via_api(other_api, job_type, {**data, "user_id": user.pk})
    assert response.status_code == 400
    assert list(response.json()["fields"]["data"]) == ["user_id"]
    assert Job.objects.count() == 0


def test_check_deploy_is_clean_with_production_settings():
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "a-production-key-that-is-long-and-random-" + "q7Zx" * 10,
        "ALLOWED_HOSTS": "api.example.com",
    }
    env.pop("SECURE_SSL_REDIRECT", None)  # scripts/test turns it off for plain-HTTP test servers
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    "key", ["", "short-key", "django-insecure-slimy-development-key-do-not-use-in-production"]
)
def test_production_settings_refuse_a_missing_short_or_default_key(key):
    env = {**os.environ, "DEBUG": "0", "SECRET_KEY": key, "ALLOWED_HOSTS": "api.example.com"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr
