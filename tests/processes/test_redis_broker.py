"""The `database` queue on Redis (QUEUE_BROKER=redis), end to end with a real cluster."""

import signal
from datetime import timedelta

import pytest
import redis
from django.db import transaction
from django.utils import timezone
from django_q.conf import Conf

from chat import services
from chat.models import Conversation, Message
from queues.api import enqueue
from queues.maintenance.periodic import redeliver_stranded_jobs
from queues.models import Job
from tests.support.clients import token_client
from tests.support.cluster import wait_for
from tests.support.data import make_conversation
from tests.support.jobs import wait_for_job
from tests.support.redis_queue import ON_REDIS, REDIS_URL, RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def own_redis(monkeypatch):
    """This process enqueues on a Redis of the test's own, not running until `.start()`."""
    server = RedisServer()
    monkeypatch.setattr(Conf, "BROKER_CLASS", "queues.django_q2.redis_broker.RedisJobBroker")
    monkeypatch.setattr(Conf, "REDIS", server.url)
    yield server
    server.stop()


def push_failures(client):
    """{job_type: slimy_job_push_failures_total} as /metrics shows them."""
    lines = client.get("/metrics").content.decode().splitlines()
    prefix = 'slimy_job_push_failures_total{job_type="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith(prefix) and float(line.rsplit(" ", 1)[1])
    }


def test_a_deletion_runs_end_to_end_on_redis(redis_queue, cluster, user):
    conversation = make_conversation(user, title="On Redis", messages=20)
    cluster.start(workers=2, timeout=5, extra_env=ON_REDIS)
    response = token_client(user).delete(f"/api/chat/conversations/{conversation.pk}")
    job = wait_for_job(response.json()["job_id"], timeout=30)
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert job.result == {"deleted": True, "conversation_id": conversation.pk, "messages": 20}
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
    assert redis_queue.queue_size() == 0


def test_a_cluster_on_redis_is_alive_for_readyz_the_stats_and_the_dashboard(
    redis_queue, cluster, client, operator_user
):
    assert client.get("/readyz").json()["failed"] == ["clusters"]
    running = cluster.start(workers=2, timeout=5, extra_env=ON_REDIS)
    wait_for(lambda: client.get("/readyz").status_code == 200, 30, message="ready")
    stats = token_client(operator_user).get("/api/queues/stats").json()["queues"]["database"]
    assert stats["live_clusters"] == 1
    client.force_login(operator_user)
    dashboard = client.get("/dashboard/queues").content.decode()
    assert f'<td>{running.process.pid}</td><td><span data-queue="database">' in dashboard
    # Nothing of the heartbeat went to Redis.
    assert not redis.from_url(REDIS_URL).keys(f"{Conf.Q_STAT}:*")
    running.stop()
    client.logout()
    assert client.get("/readyz").json()["failed"] == ["clusters"]


def test_a_stopping_cluster_hands_its_claimed_tasks_back_to_redis(redis_queue, cluster, user):
    for _ in range(8):
        enqueue("test_sleep", {"user_id": user.pk, "seconds": 2})
    first = cluster.start(workers=2, timeout=5, extra_env=ON_REDIS)
    wait_for(lambda: Job.objects.filter(status="running").count() == 2, 30, message="2 running")
    first.signal_group(signal.SIGTERM)
    first.process.wait(20)
    # Redis forgets what it handed out: what the cluster held but never started is back in it.
    waiting = Job.objects.filter(status="queued").count()
    assert waiting >= 1 and redis_queue.queue_size() == waiting
    cluster.start(workers=2, timeout=5, extra_env=ON_REDIS)
    wait_for(lambda: Job.objects.filter(status="succeeded").count() == 8, 60, message="8 jobs")
    assert not Job.objects.exclude(attempts=1).exists()


def test_a_delayed_retry_waits_in_redis_and_then_runs(redis_queue, cluster, user):
    cluster.start(workers=2, timeout=5, extra_env=ON_REDIS)
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    wait_for(
        lambda: redis.from_url(REDIS_URL).zcard(redis_queue.delayed_key) == 1,
        10,
        message="the retry in the delayed set",
    )
    final = wait_for_job(job.pk, timeout=30)
    assert (final.status, final.attempts) == ("succeeded", 2)
    assert (final.finished_at - final.created_at).total_seconds() >= 2  # the 2s backoff


def test_nothing_reaches_redis_from_a_transaction_that_rolls_back(redis_queue, user):
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue("test_sleep", {"user_id": user.pk})
        assert redis_queue.queue_size() == 0  # not before the commit either
        raise RuntimeError("rolled back")
    assert redis_queue.queue_size() == 0 and Job.objects.count() == 0
    enqueue("test_sleep", {"user_id": user.pk})
    assert redis_queue.queue_size() == 1


def test_deliveries_redis_lost_are_pushed_again_by_the_maintenance_task(
    redis_queue, cluster, user, settings
):
    settings.QUEUES = {"database": {**settings.QUEUES["database"], "timeout": 5}}
    settings.QUEUE_REDELIVERY_GRACE = 2
    long_ago = timezone.now() - timedelta(minutes=5)
    conversation = Conversation.objects.create(owner=user, title="Lost push")
    lost_push = services.request_conversation_deletion(conversation, request_id="lost-push")
    lost_worker = enqueue("test_sleep", {"user_id": user.pk})
    redis_queue.purge_queue()  # both deliveries lost
    Job.objects.filter(pk=lost_push.pk).update(run_after=long_ago)
    Job.objects.filter(pk=lost_worker.pk).update(
        status="running", attempts=1, started_at=long_ago, run_after=long_ago
    )

    assert redeliver_stranded_jobs() == 2
    assert redeliver_stranded_jobs() == 0  # each job's clock was reset
    cluster.start(workers=2, timeout=5, extra_env=ON_REDIS)
    assert wait_for_job(lost_push.pk, timeout=30).status == "succeeded"
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    worker_job = wait_for_job(lost_worker.pk, timeout=30)
    assert (worker_job.status, worker_job.attempts) == ("succeeded", 2)
    assert worker_job.last_error_class == "WorkerLost"


def test_the_maintenance_task_leaves_the_database_queue_alone(user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=job.pk).update(run_after=timezone.now() - timedelta(hours=1))
    assert redeliver_stranded_jobs() == 0


def test_accepted_requests_survive_a_redis_outage_and_run_once_it_answers(
    own_redis, cluster, user, client, operator_user
):
    own_redis.start()
    quick_rescue = {"QUEUE_STRANDED_AFTER": "2", "QUEUE_RESCUE_INTERVAL": "1"}
    on_own_redis = {**ON_REDIS, "REDIS_URL": own_redis.url, **quick_rescue}
    cluster.start(workers=2, timeout=5, extra_env=on_own_redis)
    own_redis.stop()

    api = token_client(user)
    conversation = make_conversation(user, title="Redis is down", messages=3)
    deletion = api.delete(f"/api/chat/conversations/{conversation.pk}")
    assert deletion.status_code == 200, deletion.content
    one = api.post(
        "/api/queues/jobs", {"queue": "database", "type": "test_sleep", "data": {}}, format="json"
    )
    assert one.status_code == 202, one.content
    many = api.post(
        "/api/queues/jobs/bulk",
        {"queue": "database", "type": "test_sleep", "items": [{}, {}]},
        format="json",
    )
    assert many.status_code == 202, many.content
    job_ids = [deletion.json()["job_id"], one.json()["id"], *(j["id"] for j in many.json()["jobs"])]
    assert Job.objects.filter(pk__in=job_ids, status="queued").count() == 4
    failures = push_failures(client)  # and more: the cluster's rescue fails to push them too
    assert failures["delete_conversation"] >= 1 and failures["test_sleep"] >= 3
    # Reported, yet this web process stays in service: it still accepts requests.
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "degraded")
    assert ready.json()["failed"] == ["broker"]
    assert ready.json()["checks"]["broker"] == {"ok": False}  # the detail is an operator's
    client.force_login(operator_user)
    detail = client.get("/readyz").json()["checks"]["broker"]
    assert detail == {"ok": False, "detail": "unreachable"}

    own_redis.start()  # the same port: the running cluster reconnects
    assert client.get("/readyz").json()["checks"]["broker"] == {"ok": True, "detail": "reachable"}
    for job_id in job_ids:
        job = wait_for_job(job_id, timeout=40)
        assert (job.status, job.attempts) == ("succeeded", 1)
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
