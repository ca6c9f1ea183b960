"""Throttles hold: one count for every process and host, keyed on the real client address."""

import pytest
import requests
from rest_framework.settings import api_settings

from chat.models import Conversation
from queues.models import Job
from queues.web.views import EnqueueRateThrottle
from tests.support.clients import token_client

pytestmark = pytest.mark.django_db

WRONG = {"username": "alice", "password": "wrong"}


def guess(client, **headers):
    return client.post("/api/auth/token", WRONG, content_type="application/json", **headers)


def test_the_token_endpoint_is_throttled_with_a_json_429(client, user):
    assert [guess(client).status_code for _ in range(11)] == [400] * 10 + [429]
    refused = client.post(
        "/api/auth/token",
        {"username": "alice", "password": "pw-for-tests-123"},
        content_type="application/json",
    )
    assert refused.status_code == 429
    assert refused.json()["error"] == "throttled"
    assert "Retry-After" in refused.headers


def test_a_client_cannot_dodge_the_login_throttle_with_x_forwarded_for(client, user):
    statuses = [guess(client, HTTP_X_FORWARDED_FOR=f"203.0.113.{n}").status_code for n in range(11)]
    assert statuses == [400] * 10 + [429]


def test_behind_trusted_proxies_the_address_the_outermost_one_saw_is_the_key(
    client, user, settings
):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    assert api_settings.NUM_PROXIES == 1
    for _ in range(10):
        # The client's own (spoofed) entry comes first; our proxy appends the real address.
        assert guess(client, HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.7").status_code == 400
    assert guess(client, HTTP_X_FORWARDED_FOR="5.6.7.8, 198.51.100.7").status_code == 429
    assert guess(client, HTTP_X_FORWARDED_FOR="198.51.100.8").status_code == 400


def test_the_admin_login_is_throttled_on_the_same_budget_as_the_token_endpoint(client, user):
    for _ in range(9):
        assert guess(client).status_code == 400
    login = {"username": "alice", "password": "wrong", "next": "/admin/"}
    assert client.post("/admin/login/", login).status_code == 200  # the form again, 10th try
    refused = client.post("/admin/login/", login)
    assert refused.status_code == 429
    assert refused.json()["error"] == "throttled"
    assert int(refused.headers["Retry-After"]) > 0
    assert client.get("/admin/login/").status_code == 200  # the page itself is not counted


def test_the_login_throttle_is_shared_by_every_web_process(web, user):
    """Two gunicorn servers, one budget: on SQLite too, with no cache server."""
    servers = [web.start(workers=1), web.start(workers=1)]
    statuses = [
        requests.post(f"{servers[n % 2].url}/api/auth/token", json=WRONG, timeout=10).status_code
        for n in range(11)
    ]
    assert statuses == [400] * 10 + [429]


def test_enqueueing_is_rate_limited_per_user_with_a_json_429(user, other_user, monkeypatch):
    monkeypatch.setattr(EnqueueRateThrottle, "THROTTLE_RATES", {"enqueue": "3/minute"})
    api = token_client(user)
    body = {"queue": "database", "type": "test_sleep", "data": {}}
    statuses = [api.post("/api/queues/jobs", body, format="json").status_code for _ in range(4)]
    assert statuses == [202] * 3 + [429]
    refused = api.post("/api/queues/jobs", body, format="json")
    assert refused.json()["error"] == "throttled"
    assert int(refused.headers["Retry-After"]) > 0
    assert token_client(other_user).post("/api/queues/jobs", body, format="json").status_code == 202


def test_a_user_may_have_only_so_many_live_client_jobs(user, other_user, settings):
    settings.CLIENT_LIVE_JOBS_PER_USER = 3
    conversation = Conversation.objects.create(owner=user, title="Mine")
    api = token_client(user)
    body = {"queue": "database", "type": "test_sleep", "data": {}}
    for _ in range(3):
        assert api.post("/api/queues/jobs", body, format="json").status_code == 202
    message = {"conversation_id": conversation.pk, "role": "user", "content": "hi"}
    refused = api.post(
        "/api/queues/jobs",
        {"queue": "database", "type": "save_message", "data": message},
        format="json",
    )
    assert refused.status_code == 429
    assert refused.json()["error"] == "too_many_live_jobs"
    assert refused.headers["Retry-After"] == "10"
    assert Job.objects.filter(user=user).count() == 3
    # Others are not held back, and deletion is not a client job: it is never capped.
    assert token_client(other_user).post("/api/queues/jobs", body, format="json").status_code == 202
    assert api.delete(f"/api/chat/conversations/{conversation.pk}").status_code == 200
    Job.objects.filter(user=user, job_type="test_sleep").update(status="succeeded")
    assert api.post("/api/queues/jobs", body, format="json").status_code == 202


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_cannot_slip_past_the_live_job_cap_together(user, settings):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    settings.CLIENT_LIVE_JOBS_PER_USER = 5
    body = {"queue": "database", "type": "test_sleep", "data": {}}

    def post(_):
        try:  # each thread has its own client and database connection
            return token_client(user).post("/api/queues/jobs", body, format="json").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = sorted(pool.map(post, range(20)))
    assert statuses == [202] * 5 + [429] * 15
    assert Job.objects.filter(user=user).count() == 5
