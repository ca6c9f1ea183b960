"""The web tier behind PgBouncer in transaction mode and on Django's psycopg pool; workers
refusing both (docs/deployment.md, "PgBouncer and connection pools")."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests
from django.db import connection
from django.test import override_settings
from rest_framework.authtoken.models import Token

from chat.models import Conversation, Message
from queues.api import enqueue
from queues.checks import check_settings
from queues.engine.statements import hot_cursor
from queues.models import Job
from tests.support import pgbouncer
from tests.support.cluster import ROOT, database_session
from tests.support.cluster import test_database_url as database_url

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not pgbouncer.available(), reason=f"pgbouncer is not installed ({pgbouncer.PGBOUNCER})"
    ),
]

PASSWORD = "pw-for-tests-123"


@pytest.fixture
def bouncer(tmp_path):
    server = pgbouncer.PgBouncer(tmp_path)
    yield server
    server.stop()


def qcluster(env: dict[str, str]) -> subprocess.CompletedProcess:
    """`manage.py qcluster --run-once` with `env` over the test's environment."""
    return subprocess.run(
        [sys.executable, "manage.py", "qcluster", "--run-once"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def exercise_web_tier(url: str, owner, staff) -> None:
    """DELETE of conversations, enqueues through the API, GETs and the admin, each many times, so
    every database connection the web process uses runs the queue's statements more often than
    `hot_cursor` needs to prepare them (were they prepared)."""
    api = requests.Session()
    api.headers["Authorization"] = f"Token {Token.objects.get_or_create(user=owner)[0].key}"
    conversations = [Conversation.objects.create(owner=owner, title=f"c{i}") for i in range(24)]
    for conversation in conversations:
        Message.objects.create(conversation=conversation, role="user", content="hi")
    job_ids = []
    for conversation in conversations:
        deleted = api.delete(f"{url}/api/chat/conversations/{conversation.pk}")
        assert deleted.status_code in (200, 202), deleted.text
        job_ids.append(deleted.json()["job_id"])
    for i in range(12):
        created = api.post(
            f"{url}/api/queues/jobs",
            json={"queue": "database", "type": "create_conversation", "data": {"title": f"n{i}"}},
        )
        assert created.status_code in (200, 201, 202), created.text
        job_ids.append(created.json()["id"])
    for job_id in job_ids:
        got = api.get(f"{url}/api/queues/jobs/{job_id}")
        assert got.status_code == 200, got.text
    assert Job.objects.filter(pk__in=job_ids).count() == len(job_ids)
    assert api.get(f"{url}/api/chat/conversations").status_code == 200

    browser = requests.Session()
    login_page = browser.get(f"{url}/admin/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text).group(1)
    listed = browser.post(
        f"{url}/admin/login/?next=/admin/queues/job/",
        data={"username": staff.username, "password": PASSWORD, "csrfmiddlewaretoken": csrf},
        headers={"Referer": f"{url}/admin/login/"},
    )
    assert listed.status_code == 200 and listed.url.endswith("/admin/queues/job/"), listed.text
    assert str(job_ids[0]) in listed.text
    detail = browser.get(f"{url}/admin/queues/job/{job_ids[0]}/change/")
    assert detail.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_the_web_tier_works_through_pgbouncer_in_transaction_mode(web, bouncer, make_user):
    owner = make_user("alice")
    staff = make_user("staff", is_staff=True, is_superuser=True)
    # One process of one thread: every request on one client connection, so the queue's statements
    # run there often enough to be prepared if they were.
    server = web.start(
        workers=1,
        threads=1,
        extra_env={
            "DATABASE_URL": bouncer.database_url(),
            "QUEUE_PREPARED_STATEMENTS": "0",
            "DEBUG": "1",  # the admin's session cookie over plain HTTP
        },
    )
    exercise_web_tier(server.url, owner, staff)


@pytest.mark.django_db(transaction=True)
def test_without_the_setting_the_queues_prepared_statements_break_through_pgbouncer(
    web, bouncer, user, api
):
    """The control: what QUEUE_PREPARED_STATEMENTS=0 is for. A statement prepared in one
    transaction is gone when PgBouncer gives the next one another server session."""
    server = web.start(workers=1, threads=1, extra_env={"DATABASE_URL": bouncer.database_url()})
    token = Token.objects.get(user=user).key
    statuses = []
    for i in range(12):
        conversation = Conversation.objects.create(owner=user, title=f"c{i}")
        deleted = requests.delete(
            f"{server.url}/api/chat/conversations/{conversation.pk}",
            headers={"Authorization": f"Token {token}"},
        )
        statuses.append(deleted.status_code)
    assert 500 in statuses, statuses


@pytest.mark.django_db(transaction=True)
def test_the_web_tier_works_on_djangos_psycopg_pool(web, make_user):
    owner = make_user("alice")
    staff = make_user("staff", is_staff=True, is_superuser=True)
    server = web.start(workers=1, threads=4, extra_env={"DATABASE_POOL": "1", "DEBUG": "1"})
    exercise_web_tier(server.url, owner, staff)


@pytest.mark.django_db(transaction=True)
def test_a_worker_pointed_at_pgbouncer_refuses_to_start_and_says_why(bouncer):
    result = qcluster({"DATABASE_URL": bouncer.database_url(), "QUEUE_PREPARED_STATEMENTS": "0"})
    assert result.returncode != 0
    assert "QUEUE_PREPARED_STATEMENTS is off" in result.stderr, result.stderr
    assert "direct or session-mode connection" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_a_worker_on_djangos_psycopg_pool_refuses_to_start_and_says_why():
    result = qcluster({"DATABASE_POOL": "1"})
    assert result.returncode != 0
    assert '["OPTIONS"]["pool"] is set' in result.stderr, result.stderr


@pytest.mark.django_db
def test_with_prepared_statements_off_the_hot_cursor_is_djangos_and_enqueue_works(user):
    with hot_cursor() as cursor:
        assert type(cursor.cursor).__name__ == "ServerBindingCursor"
    with override_settings(QUEUE_PREPARED_STATEMENTS=False):
        with hot_cursor() as cursor:
            assert type(cursor.cursor).__name__ != "ServerBindingCursor"
            assert cursor.connection is connection.connection
        job = enqueue("create_conversation", {"user_id": user.pk, "title": "t"})
    assert Job.objects.get(pk=job.pk).status == "queued"


def test_prepared_statements_setting_must_be_a_bool():
    with override_settings(QUEUE_PREPARED_STATEMENTS="no"):
        problems = check_settings()
    assert [p.id for p in problems] == ["queues.E001"]
    assert "QUEUE_PREPARED_STATEMENTS must be True or False" in problems[0].msg


@pytest.mark.django_db
def test_the_hot_cursor_follows_the_connection_a_pool_checkout_hands_the_wrapper():
    """Under Django's pool each checkout may give the wrapper another psycopg connection: the
    cursor `hot_cursor` keeps is always one of the connection in use, never a previous one's."""
    with hot_cursor() as cursor:
        assert cursor.cursor.connection is connection.connection
    own, other = connection.connection, database_session()
    try:
        connection.connection = other  # what `pool.getconn()` may return on the next checkout
        for _ in range(6):  # past PREPARE_AFTER: prepared on `other`, where it then runs
            with hot_cursor() as cursor:
                assert cursor.cursor.connection is other
                cursor.execute("SELECT %s::int", [1])
                assert cursor.fetchone() == (1,)
    finally:
        connection.connection = own
        other.close()
    with hot_cursor() as cursor:
        assert cursor.cursor.connection is own
        cursor.execute("SELECT %s::int", [2])
        assert cursor.fetchone() == (2,)
