"""The `database` queue on Redis (QUEUE_BROKER=redis), end to end with a real cluster."""

import pytest
import redis
from django.db import transaction
from django_q.brokers import get_broker
from django_q.conf import Conf

from chat.models import Conversation, Message
from queues.models import Job
from queues.services import enqueue
from tests.conftest import token_client
from tests.support.cluster import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

# A database number of its own, so the tests touch nobody else's keys.
REDIS_URL = "redis://127.0.0.1:6379/13"
ON_REDIS = {"QUEUE_BROKER": "redis", "REDIS_URL": REDIS_URL, "QUEUE_REDELIVERY_GRACE": "2"}


@pytest.fixture
def redis_queue(monkeypatch):
    """This process enqueues on Redis too; the queue's keys are empty before and after."""
    monkeypatch.setattr(Conf, "BROKER_CLASS", "queues.redis_broker.RedisJobBroker")
    monkeypatch.setattr(Conf, "REDIS", REDIS_URL)
    broker = get_broker("database")
    broker.delete_queue()
    yield broker
    broker.delete_queue()


def finished(job_id, timeout=30):
    return wait_for(
        lambda: (job := Job.objects.get(pk=job_id)).is_finished and job, timeout, message="job"
    )


def test_a_deletion_runs_end_to_end_on_redis(redis_queue, cluster, user):
    conversation = Conversation.objects.create(owner=user, title="On Redis")
    Message.objects.bulk_create(
        Message(conversation=conversation, role="user", content=f"m{i}") for i in range(20)
    )
    cluster.start(workers=2, timeout=5, extra_env=ON_REDIS)
    response = token_client(user).delete(f"/api/chat/conversations/{conversation.pk}")
    job = finished(response.json()["job_id"])
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert job.result == {"deleted": True, "conversation_id": conversation.pk, "messages": 20}
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
    assert redis_queue.queue_size() == 0


def test_a_delayed_retry_waits_in_redis_and_then_runs(redis_queue, cluster, user):
    cluster.start(workers=2, timeout=5, extra_env=ON_REDIS)
    job = enqueue("database", "test_flaky", {"user_id": user.pk, "fail_times": 1})
    wait_for(
        lambda: redis.from_url(REDIS_URL).zcard(redis_queue.delayed_key) == 1,
        10,
        message="the retry in the delayed set",
    )
    final = finished(job.pk)
    assert (final.status, final.attempts) == ("succeeded", 2)
    assert (final.finished_at - final.created_at).total_seconds() >= 2  # the 2s backoff


def test_nothing_reaches_redis_from_a_transaction_that_rolls_back(redis_queue, user):
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue("database", "test_sleep", {"user_id": user.pk})
        assert redis_queue.queue_size() == 0  # not before the commit either
        raise RuntimeError("rolled back")
    assert redis_queue.queue_size() == 0 and Job.objects.count() == 0
    enqueue("database", "test_sleep", {"user_id": user.pk})
    assert redis_queue.queue_size() == 1
