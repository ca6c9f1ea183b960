"""Every read path of job records finds its rows on an index of a realistic table.

Most indexes of `queues_job` are partial (migration 0017: each job write maintains only the
indexes whose predicate it meets), and PostgreSQL uses a partial index only when it can prove
the query's WHERE implies the predicate. These tests EXPLAIN the statements the code really
sends, on 20,000 job records with fresh statistics: the planner's choice, not a forced one.
"""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat.models import Conversation
from chat.sweeper import sweep_deletions
from queues.api import cancel_waiting_jobs, forget_subject
from queues.core import selectors
from queues.engine import engine, postgresql
from queues.maintenance import rescuer
from queues.maintenance.periodic import prune_finished_jobs
from queues.models import Job
from tests.support.clients import token_client

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

USERS = 100
# Per 100 jobs: 90 succeeded, 4 failed, 2 cancelled, 2 queued, 1 retrying, 1 running. Waiting
# jobs are due within the last minute (none stranded), finished ones finished as they were made.
JOBS = """
INSERT INTO queues_job (id, queue, job_type, data, subject, user_id, request_id, trace_context,
    status, attempts, max_attempts, run_after, last_error, last_error_class, traceback, priority,
    unique_key, unique_states, worker, created_at, started_at, finished_at, retried_by_id,
    cancel_requested_by_id)
SELECT gen_random_uuid(), 'database',
    (ARRAY['delete_conversation', 'save_message', 'create_conversation', 'test_sleep'])
        [1 + mod(g, 4)],
    '{}', 'conversation:' || g, (%(users)s)[1 + mod(g, 100)], md5(g::text), '{}',
    CASE WHEN mod(g, 100) < 90 THEN 'succeeded' WHEN mod(g, 100) < 94 THEN 'failed'
        WHEN mod(g, 100) < 96 THEN 'cancelled' WHEN mod(g, 100) < 98 THEN 'queued'
        WHEN mod(g, 100) < 99 THEN 'retrying' ELSE 'running' END,
    1, 3, CASE WHEN mod(g, 100) IN (96, 97, 98) THEN now() - mod(g, 60) * interval '1 s'
        ELSE now() - (20000 - g) * interval '10 s' END,
    '', '', '', 0, '', 0, '', now() - (20000 - g) * interval '10 s',
    now() - (20000 - g) * interval '10 s',
    CASE WHEN mod(g, 100) < 96 THEN now() - (20000 - g) * interval '10 s' END,
    CASE WHEN mod(g, 500) = 0 THEN (%(users)s)[2] END,
    CASE WHEN mod(g, 700) = 0 THEN (%(users)s)[2] END
FROM generate_series(1, 20000) g
"""


@pytest.fixture
def users():
    User = get_user_model()
    User.objects.bulk_create(User(username=f"user{n}") for n in range(USERS))
    return list(User.objects.filter(username__startswith="user").order_by("pk"))


@pytest.fixture
def jobs(users):
    with connection.cursor() as cursor:
        cursor.execute(JOBS, {"users": [user.pk for user in users]})
        cursor.execute("ANALYZE queues_job")


def job_plans(call):
    """{statement: its EXPLAIN} for every statement on job records that `call` sends."""
    with CaptureQueriesContext(connection) as sent:
        call()
    plans = {}
    with connection.cursor() as cursor:
        for query in sent.captured_queries:
            sql = query["sql"] or ""  # "": sent with server-side binding (`hot_cursor`)
            if sql.startswith(("SELECT", "UPDATE", "DELETE")) and '"queues_job"' in sql:
                cursor.execute(f"EXPLAIN {sql}")
                plans[sql] = "\n".join(row[0] for row in cursor.fetchall())
    assert plans, "no statement on job records"
    return plans


def assert_every_plan_uses(plans, index):
    for sql, plan in plans.items():
        assert index in plan and "Seq Scan on queues_job" not in plan, f"{sql}\n{plan}"


@pytest.mark.parametrize(
    "name, statuses",
    [
        ("job_live_status_idx", Job.LIVE),
        ("job_retention_finished_idx", Job.FINISHED),
        ("job_waiting_due_idx", Job.WAITING),
        ("job_waiting_row_idx", Job.WAITING),
    ],
)
def test_the_partial_indexes_hold_the_statuses_their_queries_name(name, statuses):
    (index,) = [index for index in Job._meta.indexes if index.name == name]
    assert index.condition == Q(status__in=list(statuses))


def operator():
    return get_user_model().objects.create_superuser("root", password="pw-for-tests-123")


@pytest.mark.parametrize(
    "search, index",
    [
        (lambda user: {"user": user.username}, "job_user_status_idx"),
        (lambda user: {"user": str(user.pk), "status": "failed"}, "job_user_status_idx"),
        (lambda user: {"subject": "conversation:4242"}, "job_subject_idx"),
        (lambda user: {"status": "running"}, "job_live_status_idx"),
    ],
)
def test_the_dashboards_search_finds_its_jobs_on_an_index(jobs, users, search, index):
    viewer = operator()
    matching = selectors.search_jobs(viewer, **search(users[7]))
    plans = job_plans(lambda: selectors.jobs_page(matching, size=50))
    assert_every_plan_uses(plans, index)


def test_a_user_sees_their_jobs_on_an_index(jobs, users):
    plans = job_plans(lambda: selectors.jobs_page(selectors.jobs_visible_to(users[7]), size=50))
    assert_every_plan_uses(plans, "job_user_status_idx")


@pytest.mark.parametrize(
    "query, index",
    [
        ("", "job_created_idx"),
        ("?status=failed", "job_failed_created_idx"),
        ("?subject=conversation:4242", "job_subject_idx"),
        ("?q=conversation:4242", "job_subject_idx"),
    ],
)
def test_the_apis_job_list_pages_on_an_index(jobs, query, index):
    client = token_client(operator())
    first = client.get(f"/api/queues/jobs{query}").json()
    plans = job_plans(lambda: client.get(first["next"] or f"/api/queues/jobs{query}"))
    pages = {sql: plan for sql, plan in plans.items() if "LIMIT" in sql}
    assert len(pages) == 1, plans.keys()
    assert_every_plan_uses(pages, index)


def test_a_users_job_list_is_on_their_index(jobs, users):
    plans = job_plans(lambda: token_client(users[7]).get("/api/queues/jobs"))
    pages = {sql: plan for sql, plan in plans.items() if "LIMIT" in sql}
    assert_every_plan_uses(pages, "job_user_status_idx")


@pytest.mark.parametrize("job_types", [None, ["delete_conversation"]])
def test_the_oldest_due_job_is_found_on_an_index(jobs, job_types):
    plans = job_plans(lambda: selectors.oldest_due_job("database", job_types))
    assert_every_plan_uses(plans, "job_waiting_due_idx")


def test_the_oldest_due_job_of_some_types_is_found_on_an_index(jobs):
    """Where a type is common the planner walks the queue's waiting jobs by due time; where it
    is rare (the app's own jobs behind a client backlog), its own index and a sort."""
    plans = job_plans(lambda: selectors.oldest_due_job("database", ["delete_conversation"]))
    for sql, plan in plans.items():
        assert "Seq Scan on queues_job" not in plan, f"{sql}\n{plan}"
        assert "job_type_due_idx" in plan or "job_waiting_due_idx" in plan, f"{sql}\n{plan}"


@pytest.fixture
def broker_rows(jobs):
    """A broker row, waiting its turn, for each waiting job."""
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH w AS (SELECT id FROM queues_job WHERE status IN ('queued', 'retrying')),"
            " r AS (INSERT INTO django_q_ormq (key, payload, lock, priority)"
            " SELECT 'database', 'x', now(), 0 FROM w RETURNING id),"
            " pairs AS (SELECT w.id AS job, r.id AS row FROM"
            " (SELECT id, row_number() OVER () n FROM w) w"
            " JOIN (SELECT id, row_number() OVER () n FROM r) r USING (n))"
            " UPDATE queues_job SET broker_row = pairs.row FROM pairs WHERE id = pairs.job"
        )
        cursor.execute("ANALYZE django_q_ormq")
        cursor.execute("ANALYZE queues_job")


def test_the_rescuers_check_and_passes_find_live_jobs_on_an_index(jobs, broker_rows):
    now = timezone.now()
    late = rescuer.stranded_before(now)
    params = {
        "queue": "database",
        "now": now,
        "late": late,
        "late_epoch": int(late.timestamp()),
        "claimed_like": "database@%",
    }
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {postgresql.RESCUE_NEEDED}", params)
        needed = "\n".join(row[0] for row in cursor.fetchall())
    assert "job_live_status_idx" in needed, needed  # lost attempts
    assert "job_waiting_due_idx" in needed, needed  # the longest-due waiting jobs
    assert "queues_ormq_claimed_idx" in needed, needed  # rows claimed long ago
    for scan in ("Seq Scan on queues_job", "Seq Scan on django_q_ormq", "Parallel"):
        assert scan not in needed, needed
    assert_every_plan_uses(
        job_plans(lambda: engine().lost_attempts("database", rescuer.BATCH)),
        "job_live_status_idx",
    )
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {postgresql.STRANDED_IDS}", {**params, "limit": rescuer.BATCH})
        stranded = "\n".join(row[0] for row in cursor.fetchall())
    # Only the waiting jobs are read (600 of 20,000 here), whichever of their indexes.
    assert "job_waiting_" in stranded and "Seq Scan on queues_job" not in stranded, stranded


def test_retention_ranks_a_status_on_the_index_of_finished_jobs(jobs):
    plans = job_plans(prune_finished_jobs)
    (cancelled,) = [plan for sql, plan in plans.items() if "'cancelled'" in sql]
    assert "job_retention_finished_idx" in cancelled, cancelled


def test_retention_by_age_finds_old_records_on_the_index_of_finish_times(jobs, settings):
    # The oldest finished record is 55 hours old: a limit near it, as a day's pruning would meet.
    settings.JOB_RETENTION_MAX_AGE = {"succeeded": timedelta(hours=54)}
    settings.JOB_RETENTION_BY_TYPE = {"save_message": {"max_age": {"succeeded": 54 * 3600}}}
    plans = job_plans(prune_finished_jobs)
    by_age = {sql: plan for sql, plan in plans.items() if '"finished_at" <' in sql}
    assert len(by_age) == 2, plans.keys()  # the type's own limit, the status's for the others
    assert_every_plan_uses(by_age, "job_finished_idx")


def test_the_sweeper_looks_its_subjects_up_on_an_index(jobs, users):
    long_ago = timezone.now() - timedelta(days=1)
    Conversation.objects.bulk_create(
        Conversation(owner=users[n], title="t", deletion_requested_at=long_ago) for n in range(50)
    )
    plans = job_plans(sweep_deletions)
    lookups = {sql: plan for sql, plan in plans.items() if "IN ('conversation:" in sql}
    assert len(lookups) == 2, plans.keys()  # live jobs, failed jobs
    for sql, plan in lookups.items():
        assert "Seq Scan on queues_job" not in plan, f"{sql}\n{plan}"


@pytest.mark.parametrize(
    "forget",
    [
        lambda: forget_subject("conversation:4242"),
        lambda: cancel_waiting_jobs("conversation:4242", "save_message"),
    ],
)
def test_a_subjects_jobs_are_found_on_the_subject_index(jobs, forget):
    assert_every_plan_uses(job_plans(forget), "job_subject_idx")


def test_deleting_a_user_finds_their_jobs_on_an_index_for_each_reference(jobs, users):
    plans = job_plans(users[1].delete)  # user 1 enqueued, retried and stopped jobs
    index_of = {
        '"user_id" = NULL': "job_user_status_idx",
        '"retried_by_id" = NULL': "job_retried_by_idx",
        '"cancel_requested_by_id" = NULL': "job_cancel_requested_by_idx",
    }
    for assignment, index in index_of.items():
        (plan,) = [plan for sql, plan in plans.items() if f"SET {assignment}" in sql]
        assert index in plan, plan
    erasure = {sql: plan for sql, plan in plans.items() if sql.startswith("SELECT")}
    assert_every_plan_uses(erasure, "job_user_status_idx")
