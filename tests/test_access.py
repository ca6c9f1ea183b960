"""Who may do what: every endpoint for anonymous, owner, another user and staff."""

import os
import subprocess
import sys

import pytest
from rest_framework.test import APIClient

from chat.models import Conversation, Message
from queues.models import Job
from queues.runner import run_job
from queues.services import enqueue
from tests.conftest import token_client

pytestmark = pytest.mark.django_db

C = "/api/chat/conversations"

# (method, path, body, {role: expected status}); {conv} is the owner's conversation and {job}
# the owner's job. Staff get no special view of conversations, only of jobs.
TABLE = [
    ("get", C, None, {"anonymous": 401, "owner": 200, "other": 200, "staff": 200}),
    ("post", C, {"title": "New"}, {"anonymous": 401, "owner": 201, "other": 201, "staff": 201}),
    ("get", C + "/{conv}", None, {"anonymous": 401, "owner": 200, "other": 404, "staff": 404}),
    (
        "patch",
        C + "/{conv}",
        {"title": "Renamed"},
        {"anonymous": 401, "owner": 200, "other": 404, "staff": 404},
    ),
    (
        "get",
        C + "/{conv}/messages",
        None,
        {"anonymous": 401, "owner": 200, "other": 404, "staff": 404},
    ),
    (
        "post",
        C + "/{conv}/messages",
        {"role": "user", "content": "hi"},
        {"anonymous": 401, "owner": 201, "other": 404, "staff": 404},
    ),
    ("delete", C + "/{conv}", None, {"anonymous": 401, "owner": 200, "other": 404, "staff": 404}),
    (
        "get",
        "/api/queues/jobs/{job}",
        None,
        {"anonymous": 401, "owner": 200, "other": 404, "staff": 200},
    ),
    (
        "post",
        "/api/queues/jobs",
        {"queue": "database", "type": "test_sleep", "data": {}},
        {"anonymous": 401, "owner": 202, "other": 202, "staff": 202},
    ),
    (
        "get",
        "/api/queues/stats",
        None,
        {"anonymous": 401, "owner": 403, "other": 403, "staff": 200},
    ),
    ("get", "/admin/", None, {"anonymous": 302, "owner": 302, "other": 302, "staff": 200}),
    (
        "get",
        "/dashboard/queues",
        None,
        {"anonymous": 302, "owner": 302, "other": 302, "staff": 200},
    ),
    ("get", "/healthz", None, {"anonymous": 200, "owner": 200, "other": 200, "staff": 200}),
]


@pytest.fixture
def clients(user, other_user, staff_user):
    def session(u):
        client = APIClient()
        client.force_login(u)
        return client

    return {
        "anonymous": (APIClient(), APIClient()),
        "owner": (token_client(user), session(user)),
        "other": (token_client(other_user), session(other_user)),
        "staff": (token_client(staff_user), session(staff_user)),
    }


@pytest.mark.parametrize(
    "method, path, body, expected", TABLE, ids=[f"{m} {p}" for m, p, *_ in TABLE]
)
@pytest.mark.parametrize("role", ["anonymous", "owner", "other", "staff"])
def test_each_endpoint_answers_each_role_as_the_table_says(
    clients, user, role, method, path, body, expected
):
    conversation = Conversation.objects.create(owner=user, title="Owned")
    Message.objects.create(conversation=conversation, role="user", content="hello")
    job = enqueue("database", "test_sleep", {"user_id": user.pk})
    url = path.format(conv=conversation.pk, job=job.pk)
    token, session = clients[role]
    # The admin and the dashboard are browser pages: signed in through the session, not a token.
    client = session if url.startswith(("/admin/", "/dashboard/")) else token
    response = getattr(client, method)(url, body, format="json")
    assert response.status_code == expected[role], response.content
    if response.status_code == 404:
        missing_url = path.format(conv=987654321, job="00000000-0000-0000-0000-000000000000")
        missing = getattr(client, method)(missing_url, body, format="json")
        assert response.content == missing.content
    if expected[role] >= 400:
        conversation.refresh_from_db()
        assert conversation.title == "Owned" and conversation.deletion_requested_at is None
        assert conversation.messages.count() == 1


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
    assert "CSRF" in response.json()["detail"]
    conversation.refresh_from_db()
    assert conversation.title == "Owned" and conversation.deletion_requested_at is None
    assert Job.objects.count() == 0 and Conversation.objects.count() == 1


def test_a_job_naming_another_users_conversation_deletes_nothing(user, other_api):
    conversation = Conversation.objects.create(owner=user, title="Not bob's")
    Message.objects.create(conversation=conversation, role="user", content="keep me")
    response = other_api.post(
        "/api/queues/jobs",
        {
            "queue": "database",
            "type": "delete_conversation",
            "data": {"conversation_id": conversation.pk},
        },
        format="json",
    )
    assert response.status_code == 202
    run_job(response.json()["id"])
    job = Job.objects.get(pk=response.json()["id"])
    assert job.status == "failed" and job.last_error_class == "PermanentJobError"
    assert Conversation.objects.filter(pk=conversation.pk, deletion_requested_at=None).exists()
    assert Message.objects.filter(conversation=conversation).count() == 1


def test_a_job_cannot_be_enqueued_in_another_users_name(user, other_api):
    response = other_api.post(
        "/api/queues/jobs",
        {"queue": "database", "type": "test_sleep", "data": {"user_id": user.pk}},
        format="json",
    )
    assert response.status_code == 400
    assert Job.objects.count() == 0


def test_the_token_endpoint_is_throttled_with_a_json_429(client, user):
    statuses = [
        client.post(
            "/api/auth/token",
            {"username": "alice", "password": "wrong"},
            content_type="application/json",
        ).status_code
        for _ in range(11)
    ]
    assert statuses == [400] * 10 + [429]
    refused = client.post(
        "/api/auth/token",
        {"username": "alice", "password": "pw-for-tests-123"},
        content_type="application/json",
    )
    assert refused.status_code == 429
    assert refused.json()["error"] == "throttled"
    assert "Retry-After" in refused.headers


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
