"""One user's flood of client-enqueued jobs does not hold back another user's deletion."""

import time

import pytest

from chat.models import Conversation
from queues.models import Job
from queues.services import enqueue
from tests.support.clients import token_client
from tests.support.cluster import wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.cluster,
    pytest.mark.django_db(transaction=True),
]

FLOOD = 400
JOB_SECONDS = 0.05


def test_a_deletion_is_claimed_before_another_users_flood(cluster, user, other_user):
    conversation = Conversation.objects.create(owner=user, title="Mine")
    # The flood is as many jobs as 4 users' caps; enqueued directly, past the API's limits.
    for _ in range(FLOOD):
        enqueue("database", "test_sleep", {"user_id": other_user.pk, "seconds": JOB_SECONDS})
    running = cluster.start(workers=2)
    wait_for(lambda: Job.objects.filter(status="succeeded").count() >= 20, 60, message="flood")

    requested = time.monotonic()
    deletion = token_client(user).delete(f"/api/chat/conversations/{conversation.pk}")
    job_id = deletion.json()["job_id"]
    wait_for(
        lambda: Job.objects.filter(pk=job_id, status="succeeded").exists(),
        60,
        interval=0.01,
        message="the deletion",
    )
    latency = time.monotonic() - requested
    left = Job.objects.filter(job_type="test_sleep").exclude(status="succeeded").count()
    # Draining the flood on 2 workers takes about FLOOD * JOB_SECONDS / 2 = 10 s; the deletion
    # waits only for the jobs already in the workers' hands.
    print(f"deletion latency {latency:.3f}s with {left} flood jobs still waiting")
    assert latency < 2.0
    assert left > FLOOD / 2
    running.stop()
