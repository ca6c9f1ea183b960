"""Metrics, stats, health checks and logs, read across real processes."""

import json
from datetime import timedelta

import pytest
import requests
from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from chat.models import Conversation
from queues.api import enqueue
from queues.core import selectors
from queues.execution.runner import run_job
from queues.maintenance.periodic import prune_finished_jobs
from queues.models import Job
from tests.support.clients import token_client
from tests.support.cluster import wait_for
from tests.support.jobs import wait_for_jobs


def cluster_test(test):
    """On PostgreSQL, with real qcluster processes and committed data."""
    for mark in (
        pytest.mark.postgres,
        pytest.mark.cluster,
        pytest.mark.django_db(transaction=True),
    ):
        test = mark(test)
    return test


def slimy_samples(base_url):
    """{(metric sample name, queue, job_type, le): value} for our own metrics."""
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("slimy_"):
                labels = sample.labels
                key = (sample.name, labels.get("queue"), labels.get("job_type"), labels.get("le"))
                samples[key] = sample.value
    return samples


def total(samples, name, job_type=None):
    return sum(v for (n, _, t, _), v in samples.items() if n == name and job_type in (None, t))


@cluster_test
def test_metrics_match_job_records_from_any_process_across_restarts_and_pruning(
    cluster, web, live_server, user, tmp_path
):
    first = cluster.start(workers=4, extra_env={"LOG_FORMAT": "json"})
    conversation = Conversation.objects.create(owner=user, title="t")
    deleted = token_client(user).delete(f"/api/chat/conversations/{conversation.pk}")
    jobs = [enqueue("test_sleep", {"user_id": user.pk}) for _ in range(4)]
    jobs += [enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1}) for _ in range(2)]
    jobs += [enqueue("test_permanent", {"user_id": user.pk}) for _ in range(2)]
    jobs += [enqueue("test_flaky", {"user_id": user.pk, "fail_times": 9})]
    wait_for_jobs(timeout=60)

    records = Job.objects.all()
    attempts = sum(records.values_list("attempts", flat=True))
    succeeded = records.filter(status="succeeded").count()
    expected = {
        "slimy_jobs_enqueued_total": records.count(),
        "slimy_jobs_succeeded_total": succeeded,
        "slimy_jobs_failed_total": records.filter(status="failed").count(),
        "slimy_job_attempts_failed_total": attempts - succeeded,
        "slimy_job_retries_scheduled_total": 2 + 2,
        "slimy_jobs_waiting": 0,
        "slimy_jobs_running": 0,
        "slimy_job_run_seconds_count": attempts,
        "slimy_job_wait_seconds_count": attempts,
    }
    assert (expected["slimy_jobs_failed_total"], expected["slimy_job_attempts_failed_total"]) == (
        3,
        2 + 2 + 3,
    )
    ours = slimy_samples(live_server.url)
    assert {name: total(ours, name) for name in expected} == expected
    assert total(ours, "slimy_jobs_failed_total", "test_flaky") == 1  # once, not per attempt
    assert total(ours, "slimy_job_attempts_failed_total", "test_flaky") == 2 + 3
    assert ours[("slimy_queue_live_clusters", "database", None, None)] == 1

    # Another web process, a gunicorn one, reports the very same numbers.
    gunicorn = web.start()
    theirs = slimy_samples(gunicorn.url)
    assert {n: total(theirs, n) for n in expected} == expected

    # A full cluster restart and the pruning of job records change nothing.
    first.stop()
    cluster.start(workers=2)
    with override_settings(JOB_RETENTION={"succeeded": 1, "failed": 1, "cancelled": 1}):
        assert prune_finished_jobs() > 0
    assert Job.objects.count() == 2
    after = slimy_samples(gunicorn.url)
    assert {n: total(after, n) for n in expected} == expected

    # The cluster's JSON log lines carry the job's ids.
    lines = [json.loads(line) for line in first.log.splitlines() if line.startswith("{")]
    delete_job = str(deleted.json()["job_id"])
    about_delete = [e for e in lines if e.get("job_id") == delete_job]
    assert about_delete, first.log[-2000:]
    assert {
        "job_id",
        "queue",
        "job_type",
        "attempt",
        "request_id",
        "conversation_id",
        "user_id",
    } <= set(about_delete[0])


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_stats_api_agrees_with_job_records_and_is_for_job_viewers_only(
    cluster, user, operator_user
):
    cluster.start()
    for _ in range(3):
        enqueue("test_sleep", {"user_id": user.pk})
    enqueue("test_permanent", {"user_id": user.pk})
    wait_for_jobs(timeout=30)

    assert token_client(user).get("/api/queues/stats").status_code == 403
    body = token_client(operator_user).get("/api/queues/stats").json()["queues"]["database"]
    assert (body["succeeded"], body["failed"], body["waiting"], body["running"]) == (3, 1, 0, 0)
    assert body["success_rate"] == 0.75
    assert body["throughput_per_minute"]["1m"] >= 1
    assert body["throughput_per_minute"]["60m"] == pytest.approx(3 / 60, abs=0.01)
    assert body["run_seconds_avg"] is not None and body["run_seconds_p95"] is not None
    assert body["live_clusters"] == 1
    assert body["oldest_waiting_seconds"] == 0


@pytest.mark.django_db
def test_healthz_answers_while_the_process_is_alive(client):
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
def test_readyz_fails_without_a_live_cluster_and_passes_with_one(client, cluster):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["clusters"]
    assert response.json()["checks"]["database"]["ok"] is True
    running = cluster.start()
    wait_for(lambda: client.get("/readyz").status_code == 200, 30, message="ready")
    running.stop()
    assert client.get("/readyz").json()["failed"] == ["clusters"]


@pytest.mark.django_db
def test_readyz_fails_when_a_deletion_waits_too_long(client, user, settings):
    settings.READY_MAX_BACKLOG_SECONDS = 0
    enqueue("delete_conversation", {"user_id": user.pk, "conversation_id": 1})
    Job.objects.update(run_after="2020-01-01T00:00:00Z")
    assert "backlog" in client.get("/readyz").json()["failed"]


@pytest.mark.django_db
def test_one_users_backlog_of_client_jobs_does_not_fail_readyz(client, user, settings):
    settings.READY_MAX_BACKLOG_SECONDS = 0
    for _ in range(20):
        enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.update(run_after="2020-01-01T00:00:00Z")
    assert "backlog" not in client.get("/readyz").json()["failed"]


def test_readyz_fails_when_the_database_is_unreachable_and_says_why_in_the_log_only(web, tmp_path):
    server = web.start(extra_env={"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"})
    response = requests.get(f"{server.url}/readyz", timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body == {
        "status": "unavailable",
        "failed": ["database", "broker", "migrations", "clusters", "backlog"],
        "checks": {name: {"ok": False} for name in body["failed"]},
    }
    # A session cookie cannot be checked either: still the same answer, not a 500.
    cookie = requests.get(f"{server.url}/readyz", cookies={"sessionid": "x"}, timeout=10)
    assert cookie.status_code == 503 and cookie.json() == body
    logged = "readiness check database failed: OperationalError"
    wait_for(lambda: logged in server.log_path.read_text(), 10, message="the log line")
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200


@pytest.mark.django_db
def test_readyz_shows_each_checks_detail_to_operators_only(client, operator_user, user):
    anonymous = client.get("/readyz").json()
    assert anonymous["checks"]["clusters"] == {"ok": False}
    assert all(set(check) == {"ok"} for check in anonymous["checks"].values())
    client.force_login(user)
    assert client.get("/readyz").json() == anonymous
    client.force_login(operator_user)
    shown = client.get("/readyz").json()
    assert shown["checks"]["clusters"]["detail"] == "0 cluster(s) seen in the last 30 s"
    assert shown["failed"] == anonymous["failed"]


@pytest.mark.django_db
def test_dashboard_is_for_job_viewers_and_retries_a_failed_job(
    client, user, staff_user, operator_user
):
    from queues.execution.runner import run_job

    job = enqueue("test_permanent", {"user_id": user.pk})
    run_job(job.id)
    client.force_login(user)
    assert client.get("/dashboard/queues").status_code == 302  # to the admin login
    client.force_login(staff_user)
    assert client.get("/dashboard/queues").status_code == 403  # is_staff alone is no permission
    client.force_login(operator_user)
    page = client.get("/dashboard/queues")
    assert page.status_code == 200
    assert f'data-job="{job.pk}"' in page.content.decode()
    retried = client.post(f"/dashboard/queues/jobs/{job.pk}/retry", follow=True)
    assert "sent back to its queue" in retried.content.decode()
    job.refresh_from_db()
    assert (job.status, job.retried_by) == ("queued", operator_user)


@pytest.mark.django_db
def test_metrics_include_django_prometheus_http_database_and_model_series(api, client):
    api.post("/api/chat/conversations", {"title": "counted"}, format="json")
    text = client.get("/metrics").content.decode()
    assert 'django_model_inserts_total{model="conversation"}' in text
    assert "django_db_execute_total{" in text
    assert "django_http_requests_total_by_view_transport_method_total{" in text


@pytest.mark.django_db
def test_queue_wait_counts_each_attempt_from_when_it_became_due(user):
    """Not from enqueue: a retry's backoff or a long-ago enqueue is not time spent in a queue."""
    long_ago = timezone.now() - timedelta(hours=1)
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    Job.objects.filter(pk=job.pk).update(created_at=long_ago, run_after=timezone.now())
    run_job(job.pk)  # fails; its retry becomes due after a backoff
    Job.objects.filter(pk=job.pk).update(run_after=timezone.now() - timedelta(seconds=3))
    run_job(job.pk)

    buckets, _, count = selectors.histogram(
        selectors.counter_totals(), "database", "wait_seconds", "test_flaky"
    )
    per_bound = dict(buckets)
    assert count == 2
    assert per_bound[2.5] == 1  # the first attempt, due at once
    assert per_bound[5] == 2  # the retry, due 3 s before it started
