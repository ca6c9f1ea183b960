"""One user's flood of client-enqueued jobs does not hold back another user's deletion."""

import pytest

from chat.models import Conversation
from queues.api import enqueue
from queues.models import Job
from tests.support.clients import token_client
from tests.support.cluster import KEEP_ALL_JOBS, wait_for
from tests.support.jobs import wait_for_job

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
        enqueue("test_sleep", {"user_id": other_user.pk, "seconds": JOB_SECONDS})
    running = cluster.start(workers=2, extra_env=KEEP_ALL_JOBS)
    wait_for(lambda: Job.objects.filter(status="succeeded").count() >= 20, 60, message="flood")

    deletion = token_client(user).delete(f"/api/chat/conversations/{conversation.pk}")
    job_id = deletion.json()["job_id"]
    wait_for_job(job_id, until="succeeded", timeout=120)
    job = Job.objects.get(pk=job_id)
    # Fair share: the deletion starts next, after only the flood jobs already in the workers'
    # hands; first come, first served would have it wait for the rest of the flood. Counted by
    # order of starts, not by time, so a slow machine passes as surely as a fast one.
    flood = Job.objects.filter(job_type="test_sleep")
    passing = flood.filter(started_at__gt=job.created_at, started_at__lt=job.started_at).count()
    waiting = flood.filter(status="queued").count()
    print(f"{passing} flood jobs started while the deletion waited; {waiting} still queued")
    assert passing < 20
    assert waiting > FLOOD / 2  # the flood was still there to pass
    running.stop()
