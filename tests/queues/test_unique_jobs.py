"""Unique jobs: a type declares a key over its data and the statuses in which it is unique; a
duplicate enqueue returns the job holding the key, race-free across connections."""

import hashlib
import itertools
import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from unittest import mock

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext
from django_q.models import OrmQ

from chat.models import Conversation
from chat.services import enqueue_deletion
from chat.sweeper import sweep_deletions
from queues.api import enqueue, enqueue_many
from queues.core import uniqueness
from queues.core.registry import Unique, register
from queues.core.selectors import counter_totals
from queues.core.services import retry_jobs
from queues.engine import batch, engine
from queues.execution.runner import run_job
from queues.models import Job
from tests.support.job_types import NamedTestData
from tests.support.jobs import counted
from tests.support.threads import in_threads

pytestmark = pytest.mark.django_db


def test_a_duplicate_returns_the_live_job_and_stores_and_counts_nothing(user):
    first = enqueue("test_unique", {"user_id": user.pk, "name": "report"})
    again = enqueue("test_unique", {"user_id": user.pk, "name": "report"})
    other = enqueue("test_unique", {"user_id": user.pk, "name": "other"})

    assert again.pk == first.pk and again.deduplicated and not first.deduplicated
    assert other.pk != first.pk and not other.deduplicated
    assert Job.objects.count() == 2 and OrmQ.objects.count() == 2
    assert counted("enqueued", "test_unique") == 2
    assert counter_totals()[("database", "test_unique", "waiting")] == 2


def test_a_unique_key_is_stable_across_releases(user):
    """The key is stored: a change to how it is made would let a job enqueued after a deploy
    miss the duplicate enqueued before it. SHA-256 of compact JSON of [type, field values]."""
    job = enqueue("test_unique", {"user_id": user.pk, "name": "same"})
    assert job.unique_key == hashlib.sha256(b'["test_unique",["same"]]').hexdigest()


def test_equal_field_values_make_equal_keys_whatever_their_keys_order():
    kind = SimpleNamespace(name="report", unique=Unique(fields=["filters"]))
    one = uniqueness.key_of(kind, {"filters": {"year": 2026, "owner": 1}})
    other = uniqueness.key_of(kind, {"filters": {"owner": 1, "year": 2026}})
    assert one == other != uniqueness.key_of(kind, {"filters": {"owner": 2, "year": 2026}})
    assert one == hashlib.sha256(b'["report",[{"owner":1,"year":2026}]]').hexdigest()


def test_a_key_may_be_made_of_dates_and_ids_as_validated_data_holds_them():
    kind = SimpleNamespace(name="digest", unique=Unique(fields=["day", "owner"]))
    owner = uuid.UUID("12345678-1234-5678-1234-567812345678")
    key = uniqueness.key_of(kind, {"day": date(2026, 1, 2), "owner": owner})
    text = b'["digest",["2026-01-02","12345678-1234-5678-1234-567812345678"]]'
    assert key == hashlib.sha256(text).hexdigest()


def test_a_job_that_left_its_unique_states_frees_its_key(user):
    first = enqueue("test_unique", {"user_id": user.pk, "name": "report"})
    run_job(first.pk)
    assert Job.objects.get(pk=first.pk).status == "succeeded"

    second = enqueue("test_unique", {"user_id": user.pk, "name": "report"})
    assert second.pk != first.pk and not second.deduplicated


def test_a_type_unique_while_queued_takes_a_new_job_once_the_first_runs(user):
    first = enqueue("test_debounced", {"user_id": user.pk, "name": "x"})
    assert enqueue("test_debounced", {"user_id": user.pk, "name": "x"}).pk == first.pk
    Job.objects.filter(pk=first.pk).update(status="running")  # as a worker's begin leaves it

    second = enqueue("test_debounced", {"user_id": user.pk, "name": "x"})
    assert second.pk != first.pk
    assert enqueue("test_debounced", {"user_id": user.pk, "name": "x"}).pk == second.pk


def test_one_live_deletion_per_conversation(api, user):
    conversation = Conversation.objects.create(owner=user, title="t")
    deleted = api.delete(f"/api/chat/conversations/{conversation.pk}")
    # The sweeper (or an operator's retry) asking again while that job waits gets it back.
    again = enqueue_deletion(conversation.pk, owner_id=user.pk, request_id="sweeper-1")
    assert str(again.pk) == deleted.json()["job_id"] and again.deduplicated
    assert Job.objects.filter(job_type="delete_conversation").count() == 1
    assert sweep_deletions() == 0


def test_unique_declarations_must_name_data_fields_and_closed_states():
    with pytest.raises(ValueError, match="needs"):
        Unique(fields=["name"], states=["running"])  # a queued job would enter it unchecked
    with pytest.raises(ValueError, match="needs"):
        Unique(fields=["name"], states=["queued", "succeeded"])  # running -> succeeded
    with pytest.raises(ValueError, match="not in its data"):
        register("test_bad_unique", queue="database", schema=NamedTestData, unique=Unique(["x"]))(
            print
        )


def test_the_operators_retry_leaves_a_failed_job_whose_key_a_live_one_holds(user, staff_user):
    failed = enqueue("test_unique", {"user_id": user.pk, "name": "report"})
    Job.objects.filter(pk=failed.pk).update(status="failed")
    live = enqueue("test_unique", {"user_id": user.pk, "name": "report"})
    assert live.pk != failed.pk

    assert retry_jobs(Job.objects.filter(pk=failed.pk), by=staff_user) == 0
    assert Job.objects.get(pk=failed.pk).status == "failed"
    Job.objects.filter(pk=live.pk).update(status="succeeded")
    assert retry_jobs(Job.objects.filter(pk=failed.pk), by=staff_user) == 1
    assert Job.objects.get(pk=failed.pk).status == "queued"


def test_the_database_itself_refuses_a_second_job_holding_a_key(user):
    """The constraint, not only `enqueue`, keeps a key unique: on every database, after every
    table rebuild (declared on `Job`, SQLite's rebuilds keep it)."""
    live = enqueue("test_unique", {"user_id": user.pk, "name": "report"})

    def twin():
        fields = (
            "queue",
            "job_type",
            "data",
            "user",
            "max_attempts",
            "unique_key",
            "unique_states",
        )
        return Job(**{name: getattr(live, name) for name in fields})

    with pytest.raises(IntegrityError), transaction.atomic():
        twin().save(force_insert=True)
    Job.objects.filter(pk=live.pk).update(status="succeeded")  # no longer holds its key
    twin().save(force_insert=True)
    assert Job.objects.filter(unique_key=live.unique_key).count() == 2


KEY_AS_INDEX = ("queues", "0020_schedule_failure_counter")
KEY_AS_CONSTRAINT = ("queues", "0021_unique_key_constraint")


def migrate(target=None):
    """To `target`, or to the latest migration of every app; the state there."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target] if target else executor.loader.graph.leaf_nodes())
    return executor.loader.project_state(target) if target else None


@pytest.mark.django_db(transaction=True)
def test_the_constraint_migration_enforces_keys_a_table_rebuild_had_left_unguarded(user):
    state = migrate(KEY_AS_INDEX)
    try:
        with connection.cursor() as cursor:  # as SQLite's rebuild of queues_job left it
            cursor.execute("DROP INDEX IF EXISTS job_unique_key_idx")
        OldJob = state.apps.get_model("queues", "Job")
        key = {"queue": "database", "job_type": "test_unique", "unique_key": "k"}
        key.update(data={}, max_attempts=3)
        older = OldJob.objects.create(**key, unique_states=3, user_id=user.pk)
        newer = OldJob.objects.create(**key, unique_states=3, user_id=user.pk)

        # The model as of that migration: later ones may add columns.
        ConstrainedJob = migrate(KEY_AS_CONSTRAINT).apps.get_model("queues", "Job")
        states = dict(ConstrainedJob.objects.values_list("pk", "unique_states"))
        assert (states[older.pk], states[newer.pk]) == (3, 0)  # both kept; the oldest holds it
        with pytest.raises(IntegrityError), transaction.atomic():
            ConstrainedJob.objects.create(**key, unique_states=3, user_id=user.pk)

        migrate(KEY_AS_INDEX)  # and back: 0015's index again
        with pytest.raises(IntegrityError), transaction.atomic():
            OldJob.objects.create(**key, unique_states=3, user_id=user.pk)
    finally:
        migrate()


def test_the_api_answers_a_duplicate_with_200_and_the_existing_job(api):
    body = {"queue": "database", "type": "test_unique", "data": {"name": "report"}}
    created = api.post("/api/queues/jobs", body, format="json")
    again = api.post("/api/queues/jobs", body, format="json")
    assert created.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == created.json()["id"]
    assert Job.objects.count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_50_concurrent_enqueues_from_separate_connections_make_exactly_one_job(user):
    callers = 50
    start = threading.Barrier(callers)

    def enqueue_same():
        with transaction.atomic():
            start.wait(timeout=30)
            job = enqueue("test_unique", {"user_id": user.pk, "name": "race"})
            # Hold the transaction open a moment, so the others meet an uncommitted row.
            connection.cursor().execute("SELECT pg_sleep(0.05)")
        return job.pk

    ids = in_threads(enqueue_same, callers)
    assert len(ids) == callers and len(set(ids)) == 1
    assert Job.objects.filter(job_type="test_unique").count() == 1
    assert OrmQ.objects.count() == 1
    assert counted("enqueued", "test_unique") == 1


@pytest.mark.postgres
def test_enqueue_stays_one_round_trip_but_for_a_duplicate(user):
    def statements(job_type, **data):
        with CaptureQueriesContext(connection) as queries:
            enqueue(job_type, {"user_id": user.pk, **data}, user_checked=True)
        return len(queries)

    connection.ensure_connection()
    assert statements("test_sleep") == 1
    assert statements("test_unique", name="new") == 1
    assert statements("test_unique", name="new") == 2  # the skipped INSERT, the holder's read


def test_a_holder_that_finishes_before_it_is_read_frees_the_key_for_this_enqueue(user, monkeypatch):
    holder = enqueue("test_unique", {"user_id": user.pk, "name": "report"})
    read_holders = batch.holders

    def finishing_first(keys):
        Job.objects.filter(pk=holder.pk).update(status="succeeded")  # between INSERT and read
        return read_holders(keys)

    monkeypatch.setattr(batch, "holders", finishing_first)
    job = enqueue("test_unique", {"user_id": user.pk, "name": "report"})
    assert job.pk != holder.pk and not job.deduplicated
    assert Job.objects.get(pk=job.pk).status == "queued"


def at(moment):
    """The clock the unique keys read, set to `moment` (an aware datetime)."""
    return mock.patch("django.utils.timezone.now", return_value=moment)


def test_a_type_unique_over_a_period_takes_one_job_per_window_whatever_its_status(user):
    data = {"user_id": user.pk, "name": "digest"}
    with at(datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)):
        first = enqueue("test_once_per_window", data)
    run_job(first.pk)
    assert Job.objects.get(pk=first.pk).status == "succeeded"

    with at(datetime(2026, 3, 1, 12, 9, 59, tzinfo=UTC)):  # same window, its job done
        again = enqueue("test_once_per_window", data)
        other = enqueue("test_once_per_window", {**data, "name": "other"})
    with at(datetime(2026, 3, 1, 12, 10, 0, tzinfo=UTC)):  # the next window
        later = enqueue("test_once_per_window", data)

    assert again.pk == first.pk and again.deduplicated
    assert other.pk != first.pk and not other.deduplicated
    assert later.pk not in (first.pk, other.pk) and not later.deduplicated
    assert counted("enqueued", "test_once_per_window") == 3


def test_a_period_without_fields_makes_one_job_of_the_type_per_window():
    kind = Unique(fields=(), period=timedelta(hours=1))
    assert kind.states == ("queued", "running", "retrying", "succeeded", "failed", "cancelled")
    with pytest.raises(ValueError, match="fields"):
        Unique(fields=())
    with pytest.raises(ValueError, match="period"):
        Unique(fields=["name"], period=timedelta(0))
    with pytest.raises(ValueError, match="on_conflict"):
        Unique(fields=["name"], on_conflict="merge")


def test_replace_gives_the_waiting_job_the_latest_data_and_returns_it(user):
    first = enqueue("test_latest_data", {"user_id": user.pk, "name": "x", "seconds": 1})
    again = enqueue("test_latest_data", {"user_id": user.pk, "name": "x", "seconds": 2})
    many = enqueue_many(
        "test_latest_data",
        [{"user_id": user.pk, "name": "x", "seconds": s} for s in (3, 4)]
        + [{"user_id": user.pk, "name": "y", "seconds": 5}],
    )

    assert again.pk == first.pk and again.deduplicated and again.data["seconds"] == 2
    assert [job.pk for job in many[:2]] == [first.pk, first.pk]
    assert Job.objects.get(pk=first.pk).data["seconds"] == 4  # the latest enqueue's
    assert Job.objects.filter(job_type="test_latest_data").count() == 2
    assert OrmQ.objects.count() == 2 and counted("enqueued", "test_latest_data") == 2
    run_job(first.pk)
    assert Job.objects.get(pk=first.pk).result == {"name": "x", "seconds": 4}


def test_replace_leaves_a_job_that_began_as_it_is(user):
    first = enqueue("test_latest_data", {"user_id": user.pk, "name": "x", "seconds": 1})
    Job.objects.filter(pk=first.pk).update(status="running")  # began meanwhile
    job = Job.objects.get(pk=first.pk)
    duplicate = Job(data={**job.data, "seconds": 9}, subject="")
    assert engine().replace_waiting(job, duplicate) is False
    assert Job.objects.get(pk=first.pk).data["seconds"] == 1
    # Not waiting any more: the key is free again for a new waiting job.
    second = enqueue("test_latest_data", {"user_id": user.pk, "name": "x", "seconds": 3})
    assert second.pk != first.pk and second.data["seconds"] == 3


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_replacing_enqueues_make_one_job_holding_one_of_their_data(user):
    callers = 20
    start = threading.Barrier(callers)
    numbers = itertools.count()

    def enqueue_mine():
        seconds = next(numbers)
        with transaction.atomic():
            start.wait(timeout=30)
            job = enqueue("test_latest_data", {"user_id": user.pk, "name": "x", "seconds": seconds})
            connection.cursor().execute("SELECT pg_sleep(0.02)")
        return job.pk

    ids = in_threads(enqueue_mine, callers)
    (job,) = Job.objects.filter(job_type="test_latest_data")
    assert set(ids) == {job.pk} and OrmQ.objects.count() == 1
    assert job.data["seconds"] in range(callers)
    assert counted("enqueued", "test_latest_data") == 1
