import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from tests.support.clients import token_client
from tests.support.cluster import ClusterFactory
from tests.support.data import make_conversation
from tests.support.pg_server import PostgresServer
from tests.support.redis_queue import REDIS_URL
from tests.support.web import WebServerFactory


def pytest_collection_modifyitems(config, items):
    from django.db import connection

    if connection.vendor == "postgresql":
        return
    skip = pytest.mark.skip(
        reason="needs PostgreSQL (row locks, concurrent workers): set DATABASE_URL"
    )
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_throttle_counts(request, django_db_setup, django_db_blocker):
    """Throttle counts live in the cache, a table of the test database: each test that uses the
    database, or a server that does, starts with none. A test that uses neither leaves it alone
    (run alone on SQLite, its in-memory test database may be gone by then)."""
    uses_database = {"db", "transactional_db", "live_server"} & set(request.fixturenames)
    if not uses_database and request.node.get_closest_marker("django_db") is None:
        return
    with django_db_blocker.unblock():
        cache.clear()


@pytest.fixture
def make_user(db):
    def make(username, *, is_staff=False, is_superuser=False, password="pw-for-tests-123"):
        return get_user_model().objects.create_user(
            username=username, password=password, is_staff=is_staff, is_superuser=is_superuser
        )

    return make


@pytest.fixture
def user(make_user):
    return make_user("alice")


@pytest.fixture
def other_user(make_user):
    return make_user("bob")


@pytest.fixture
def staff_user(make_user):
    return make_user("staff", is_staff=True)


@pytest.fixture
def superuser(make_user):
    """A staff superuser: every permission, as the admin's owner."""
    return make_user("root", is_staff=True, is_superuser=True)


@pytest.fixture
def conversation(user):
    """Alice's conversation "Chat" holding three messages, m0 to m2."""
    return make_conversation(user)


@pytest.fixture
def api(user):
    return token_client(user)


@pytest.fixture
def other_api(other_user):
    return token_client(other_user)


@pytest.fixture
def operator_user(make_user):
    """Staff holding the job permissions an operator group grants (queues.view_job, change_job)."""
    from django.contrib.auth.models import Permission

    operator = make_user("operator", is_staff=True)
    operator.user_permissions.set(
        Permission.objects.filter(content_type__app_label="queues", codename__in=JOB_PERMISSIONS)
    )
    return operator


JOB_PERMISSIONS = ["view_job", "change_job"]


@pytest.fixture
def operator_api(operator_user):
    return token_client(operator_user)


@pytest.fixture
def failed_job(user):
    """A job of Alice's that failed for good on its first attempt."""
    from queues.api import enqueue
    from queues.execution.runner import run_job
    from queues.models import Job

    job = enqueue("test_permanent", {"user_id": user.pk})
    run_job(job.id)
    return Job.objects.get(pk=job.pk)


@pytest.fixture
def redis_queue(monkeypatch):
    """This process enqueues on Redis too (`tests/support/redis_queue.py`); the queue's keys are
    empty before and after."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "BROKER_CLASS", "queues.django_q2.redis_broker.RedisJobBroker")
    monkeypatch.setattr(Conf, "REDIS", REDIS_URL)
    broker = get_broker("database")
    broker.delete_queue()
    yield broker
    broker.delete_queue()


@pytest.fixture
def cluster(transactional_db, tmp_path):
    """Start real `manage.py qcluster` processes against the test database; stopped after.

    The declared periodic jobs (the sweeper, queues' upkeep) wait a day, so that a test's jobs
    are the only ones; a test of them makes them due itself."""
    from django_q.models import Schedule

    from queues.core import periodic

    Schedule.objects.filter(func=periodic.FIRE).update(next_run=timezone.now() + timedelta(days=1))
    factory = ClusterFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture
def web(transactional_db, tmp_path):
    """Start real gunicorn processes against the test database; stopped after."""
    factory = WebServerFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def pg_server():
    """A PostgreSQL server of the test module's own, to restart (or stop) at will."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def on_throwaway_server(pg_server, transactional_db):
    """This process's database connection, and the clusters it starts, on a fresh migrated
    database of the throwaway server; back on the test database afterwards."""
    name = f"slimy_fault_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name)
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(
        HOST="127.0.0.1", PORT=str(pg_server.port), NAME=name, USER="postgres", PASSWORD=""
    )
    call_command("migrate", verbosity=0)
    yield pg_server
    connection.close()
    connection.settings_dict.clear()
    connection.settings_dict.update(saved)
