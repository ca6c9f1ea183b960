"""Bulk enqueue: many jobs of one type in one statement, all or nothing, validated like one."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_q.models import OrmQ

from queues.api import enqueue_many
from queues.errors import JobValidationError
from queues.execution.runner import run_job
from queues.models import Job
from queues.web.views import EnqueueRateThrottle
from tests.support.jobs import counted

pytestmark = pytest.mark.django_db


def test_enqueue_many_stores_every_job_with_its_broker_row_and_exact_counters(user):
    items = [{"user_id": user.pk, "seconds": n / 100} for n in range(30)]
    jobs = enqueue_many("test_sleep", items, request_id="r-bulk")

    assert [job.data["seconds"] for job in jobs] == [n / 100 for n in range(30)]
    stored = Job.objects.filter(job_type="test_sleep")
    assert stored.count() == 30 and set(stored.values_list("request_id", flat=True)) == {"r-bulk"}
    assert OrmQ.objects.count() == 30
    assert set(stored.values_list("broker_row", flat=True)) == set(
        OrmQ.objects.values_list("id", flat=True)
    )
    assert counted("enqueued", "test_sleep") == counted("waiting", "test_sleep") == 30
    run_job(jobs[7].pk)
    assert Job.objects.get(pk=jobs[7].pk).result == {"slept": 0.07}


@pytest.mark.postgres
def test_enqueue_many_is_one_statement_on_postgresql(user):
    items = [{"user_id": user.pk} for _ in range(200)]
    connection.ensure_connection()
    with CaptureQueriesContext(connection) as queries:
        enqueue_many("test_sleep", items, user_checked=True)
    assert len(queries) == 1, [q["sql"][:60] for q in queries]


@pytest.mark.parametrize(
    "items, problem",
    [
        ([{"seconds": 1}, {"seconds": -1}], r"item 1: .*seconds"),
        ([{"seconds": 1}, "not an object"], r"item 1: "),
        ([{"seconds": "x"}], r"item 0: .*seconds"),
        ([], "non-empty list"),
    ],
)
def test_any_invalid_item_stores_nothing_and_is_named_by_its_index(user, items, problem):
    items = [{"user_id": user.pk, **item} if isinstance(item, dict) else item for item in items]
    with pytest.raises(JobValidationError, match=problem):
        enqueue_many("test_sleep", items)
    assert Job.objects.count() == 0 and OrmQ.objects.count() == 0
    assert counted("enqueued", "test_sleep") == 0


def test_a_unique_type_in_bulk_stores_one_job_per_key(user):
    existing = enqueue_many("test_unique", [{"user_id": user.pk, "name": "a"}])[0]
    names = ["a", "b", "b", "c"]
    jobs = enqueue_many("test_unique", [{"user_id": user.pk, "name": n} for n in names])

    assert jobs[0].pk == existing.pk and jobs[0].deduplicated
    assert jobs[1].pk == jobs[2].pk != jobs[3].pk
    assert Job.objects.count() == 3 and OrmQ.objects.count() == 3
    assert counted("enqueued", "test_unique") == 3


def test_the_bulk_endpoint_enqueues_as_the_caller(api, user):
    response = api.post(
        "/api/queues/jobs/bulk",
        {"queue": "database", "type": "test_sleep", "items": [{"seconds": 0}, {"seconds": 1}]},
        format="json",
    )
    assert response.status_code == 202
    jobs = response.json()["jobs"]
    assert [job["data"]["seconds"] for job in jobs] == [0, 1]
    assert {job["user_id"] for job in jobs} == {user.pk}
    assert Job.objects.filter(user=user).count() == 2


@pytest.mark.parametrize(
    "body, field",
    [
        ({"type": "test_sleep", "items": [{}, {"seconds": -1}]}, "items"),
        ({"type": "test_poison", "items": [{}]}, "items"),  # not client-enqueueable
        ({"type": "test_sleep", "items": []}, "items"),
        ({"type": "test_sleep", "items": [{}, {"user_id": 999}]}, "items"),
        ({"type": "test_sleep", "items": [{}], "priority": 10}, "priority"),
    ],
)
def test_bad_bulk_requests_get_a_400_naming_the_problem_and_store_nothing(api, body, field):
    response = api.post("/api/queues/jobs/bulk", {"queue": "database", **body}, format="json")
    assert response.status_code == 400
    assert field in response.json()["fields"]
    assert Job.objects.count() == 0


def test_each_bulk_item_counts_towards_the_live_job_cap(api, settings):
    settings.CLIENT_LIVE_JOBS_PER_USER = 5
    body = {"queue": "database", "type": "test_sleep", "items": [{}] * 3}
    assert api.post("/api/queues/jobs/bulk", body, format="json").status_code == 202
    capped = api.post("/api/queues/jobs/bulk", body, format="json")
    assert capped.status_code == 429 and capped.json()["error"] == "too_many_live_jobs"
    assert Job.objects.count() == 3


def test_each_bulk_item_counts_towards_the_enqueue_rate(api, monkeypatch):
    monkeypatch.setattr(EnqueueRateThrottle, "THROTTLE_RATES", {"enqueue": "5/minute"})
    bulk = {"queue": "database", "type": "test_sleep", "items": [{}] * 3}
    assert api.post("/api/queues/jobs/bulk", bulk, format="json").status_code == 202
    refused = api.post("/api/queues/jobs/bulk", bulk, format="json")  # 6 > 5
    assert refused.status_code == 429 and refused.json()["error"] == "throttled"
    one = {"queue": "database", "type": "test_sleep", "data": {}}
    statuses = [api.post("/api/queues/jobs", one, format="json").status_code for _ in range(3)]
    assert statuses == [202, 202, 429]  # the budget is shared with the single endpoint
    assert Job.objects.count() == 5


def test_the_items_users_are_looked_up_once_and_an_unknown_one_is_named(user, other_user):
    items = [{"user_id": pk} for pk in [user.pk, other_user.pk] * 50]
    with CaptureQueriesContext(connection) as queries:
        enqueue_many("test_sleep", items)
    assert Job.objects.count() == 100
    user_lookups = [q["sql"] for q in queries if "auth_user" in q["sql"]]
    assert len(user_lookups) == 1, user_lookups

    with pytest.raises(JobValidationError, match=r"item 2: .*user_id"):
        enqueue_many("test_sleep", [*items[:2], {"user_id": 424242}, {"user_id": 2**70}])
    assert Job.objects.count() == 100


BULK = "/api/queues/jobs/bulk"


def bulk_of(count):
    return {"queue": "database", "type": "test_sleep", "items": [{}] * count}


@pytest.mark.parametrize(
    ("count", "setting"), [(101, "CLIENT_LIVE_JOBS_PER_USER"), (100, "ENQUEUE_RATE")]
)
def test_a_bulk_request_that_can_never_fit_a_limit_is_a_400_saying_which(
    api, monkeypatch, count, setting
):
    """More items than the live-job cap (100), or than the rate allows in a window at all,
    would be refused forever: no 429 with a time to come back."""
    if setting == "ENQUEUE_RATE":
        monkeypatch.setattr(EnqueueRateThrottle, "THROTTLE_RATES", {"enqueue": "99/minute"})
    refused = api.post(BULK, bulk_of(count), format="json")
    assert refused.status_code == 400 and "Retry-After" not in refused.headers
    body = refused.json()
    assert body["error"] == "too_many_items" and setting in body["detail"]
    assert Job.objects.count() == 0


def test_with_the_default_limits_100_items_fit_and_500_never_do(api):
    assert api.post(BULK, bulk_of(500), format="json").json()["error"] == "too_many_items"
    assert api.post(BULK, bulk_of(100), format="json").status_code == 202
    assert Job.objects.count() == 100


def test_a_refused_request_spends_nothing_against_the_rate(api, monkeypatch, settings):
    monkeypatch.setattr(EnqueueRateThrottle, "THROTTLE_RATES", {"enqueue": "10/minute"})
    settings.CLIENT_LIVE_JOBS_PER_USER = 8
    assert api.post(BULK, bulk_of(6), format="json").status_code == 202
    capped = api.post(BULK, bulk_of(4), format="json")  # 10 live > 8: may fit later
    assert capped.status_code == 429 and capped.json()["error"] == "too_many_live_jobs"
    assert api.post(BULK, bulk_of(11), format="json").json()["error"] == "too_many_items"
    assert api.post(BULK, {**bulk_of(1), "type": "nope"}, format="json").status_code == 400
    Job.objects.update(status="succeeded")
    # Only the 6 accepted jobs and the invalid request were spent: 3 more fit the rate of 10.
    assert api.post(BULK, bulk_of(3), format="json").status_code == 202
    assert api.post(BULK, bulk_of(1), format="json").status_code == 429
    assert Job.objects.count() == 9
