"""Which queues each live `qcluster` serves, with its workers: the dashboard's "Live clusters"
and `slimy_cluster_workers` in `/metrics`, from the heartbeat rows its sentinels write (one per
queue, all with the main process's pid)."""

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from queues.django_q2.heartbeats import clusters_serving
from queues.models import ClusterHeartbeat
from tests.support.heartbeats import heartbeat

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_clusters():
    heartbeat("database", 100, 4, status="Working")
    heartbeat("emails", 100, 2)
    heartbeat("database", 200, 10, host="worker-2")
    heartbeat("emails", 300, 2, host="worker-3", age=60)  # gone: not seen for 60 s


def test_each_live_cluster_lists_the_queues_it_serves_with_their_workers(two_clusters):
    assert [(c["host"], c["pid"], c["queues"]) for c in clusters_serving()] == [
        (
            "worker-1",
            100,
            [
                {"queue": "database", "workers": 4, "status": "Working"},
                {"queue": "emails", "workers": 2, "status": "Idle"},
            ],
        ),
        ("worker-2", 200, [{"queue": "database", "workers": 10, "status": "Idle"}]),
    ]


def test_a_payload_signed_elsewhere_shows_no_worker_count():
    ClusterHeartbeat.objects.create(
        key="k",
        queue="database",
        host="h",
        pid=1,
        status="Idle",
        payload="x",
        seen_at=timezone.now(),
    )
    assert clusters_serving()[0]["queues"] == [
        {"queue": "database", "workers": None, "status": "Idle"}
    ]


def test_the_dashboard_shows_the_queues_each_cluster_serves(client, operator_user, two_clusters):
    client.force_login(operator_user)
    page = client.get("/dashboard/queues").content.decode()
    assert (
        'database (4 workers, Working)</span>, <span data-queue="emails">emails (2 workers, Idle)'
        in page
    )
    assert "database (10 workers, Idle)" in page
    assert "worker-3" not in page


def test_metrics_give_each_clusters_workers_per_queue(client, two_clusters):
    text = client.get("/metrics").content.decode()
    samples = {
        (s.labels["host"], s.labels["pid"], s.labels["queue"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "slimy_cluster_workers"
        for s in family.samples
    }
    assert samples == {
        ("worker-1", "100", "database"): 4,
        ("worker-1", "100", "emails"): 2,
        ("worker-2", "200", "database"): 10,
    }
