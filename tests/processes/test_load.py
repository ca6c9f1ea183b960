"""Twenty clients against gunicorn and a running cluster: no 5xx, every deletion completes."""

from collections import Counter

import pytest
import requests
from rest_framework.authtoken.models import Token

from chat.models import Conversation
from queues.models import Job
from tests.support.jobs import wait_for_jobs
from tests.support.threads import in_a_thread

pytestmark = [pytest.mark.postgres, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

CLIENTS = 20
REQUESTS_EACH = 300


def client_session(base, token, statuses, deletion_jobs, errors):
    """One client's 300 requests: create, add messages, list, read, delete, read job status."""
    http = requests.Session()
    http.headers["Authorization"] = f"Token {token}"
    mine, jobs = [], []

    def call(method, path, **kwargs):
        response = http.request(method, base + path, timeout=60, **kwargs)
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            errors.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response

    try:
        for n in range(REQUESTS_EACH):
            step = n % 6
            if step == 0:
                mine.append(
                    call("POST", "/api/chat/conversations", json={"title": f"t{n}"}).json()["id"]
                )
            elif step in (1, 2):
                content = f"message {n}"
                posted = call(
                    "POST",
                    f"/api/chat/conversations/{mine[-1]}/messages",
                    json={"role": "user", "content": content},
                )
                if posted.status_code != 201 or posted.json()["content"] != content:
                    errors.append(f"message post: {posted.status_code} {posted.text[:200]}")
            elif step == 3:
                call("GET", "/api/chat/conversations")
            elif step == 4:
                response = call("DELETE", f"/api/chat/conversations/{mine.pop(0)}")
                jobs.append(response.json()["job_id"])
            else:
                call("GET", f"/api/queues/jobs/{jobs[-1]}" if jobs else "/api/chat/conversations")
    except Exception as exc:  # reported as the test's failure below
        errors.append(repr(exc))
    deletion_jobs.extend(jobs)


def test_20_clients_x_300_mixed_requests_get_no_5xx_and_every_deletion_completes(
    web, cluster, make_user, operator_user
):
    gunicorn = web.start(workers=3, threads=4).url
    users = [make_user(f"load{n}") for n in range(CLIENTS)]
    tokens = [Token.objects.create(user=u).key for u in users]
    # Keep every record, so the totals can be checked against them (retention would prune).
    cluster.start(workers=4, extra_env={"JOB_KEEP_SUCCEEDED": str(CLIENTS * REQUESTS_EACH)})
    statuses, deletion_jobs, errors = Counter(), [], []
    sessions = [
        in_a_thread(client_session, gunicorn, token, statuses, deletion_jobs, errors)
        for token in tokens
    ]
    for join in sessions:
        join(600)  # re-raises what a session raised outside its own reporting

    assert errors == []
    # Every request is the client's own and valid: half create (conversations, messages), half
    # read or delete; no 4xx, no 5xx.
    assert statuses == {201: CLIENTS * REQUESTS_EACH // 2, 200: CLIENTS * REQUESTS_EACH // 2}
    assert len(deletion_jobs) == CLIENTS * (REQUESTS_EACH // 6)
    wait_for_jobs(deletion_jobs, until="succeeded", timeout=120, interval=0.5)
    # The job records agree with what the clients were told: one deletion job per DELETE.
    deletions = Job.objects.filter(job_type="delete_conversation")
    assert deletions.count() == len(deletion_jobs) == deletions.filter(status="succeeded").count()
    # ... and so do the queue's totals, read through the stats API.
    staff = requests.Session()
    staff.headers["Authorization"] = f"Token {Token.objects.create(user=operator_user).key}"
    stats = staff.get(f"{gunicorn}/api/queues/stats", timeout=30).json()["queues"]["database"]
    jobs = Job.objects.all()
    assert (stats["enqueued"], stats["succeeded"], stats["failed"]) == (
        jobs.count(),
        jobs.filter(status="succeeded").count(),
        jobs.filter(status="failed").count(),
    )
    assert (stats["waiting"], stats["running"]) == (0, 0)
    assert set(map(str, deletions.values_list("pk", flat=True))) == set(deletion_jobs)
    # Each client created a conversation every 6 requests and deleted each one it created.
    assert not Conversation.objects.filter(owner__in=users).exists()
    print(f"status counts: {dict(statuses)}")
