"""The job engine with real `manage.py qcluster` processes on PostgreSQL."""

import itertools
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
from django.db import connection
from django.utils import timezone

from chat import services
from chat.models import Conversation, Message
from queues.api import enqueue, enqueue_many
from queues.models import Job
from tests.support.clients import token_client
from tests.support.cluster import FAST_RECOVERY, KEEP_ALL_JOBS, database_session, wait_for
from tests.support.data import make_conversation, orphan_message_count
from tests.support.jobs import wait_for_job, wait_for_jobs
from tests.support.threads import in_threads

pytestmark = [pytest.mark.postgres, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def job_state(job_id):
    return Job.objects.get(pk=job_id)


def test_delete_through_the_api_is_carried_out_by_a_real_worker(cluster, user, other_user):
    doomed = make_conversation(user, messages=50)
    kept = make_conversation(user)
    theirs = make_conversation(other_user)
    cluster.start()

    response = token_client(user).delete(f"/api/chat/conversations/{doomed.pk}")
    job = wait_for_job(response.json()["job_id"])

    assert (job.status, job.attempts) == ("succeeded", 1)
    assert job.result == {"deleted": True, "conversation_id": doomed.pk, "messages": 50}
    assert not Conversation.objects.filter(pk=doomed.pk).exists()
    assert not Message.objects.filter(conversation_id=doomed.pk).exists()
    assert Message.objects.filter(conversation__in=[kept, theirs]).count() == 6


def niceness(pid):
    """The `nice` field of /proc/<pid>/stat (its 19th)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


def test_queue_worker_nice_lowers_the_priority_of_every_process_of_the_cluster(cluster, user):
    started = cluster.start(workers=2, extra_env={"QUEUE_WORKER_NICE": "7"})
    expected = min(os.nice(0) + 7, 19)  # added to the niceness qcluster was started with
    processes = [started.process.pid, *started.worker_pids()]
    assert len(processes) >= 3  # qcluster, and its workers among the sentinel's children
    assert {niceness(pid) for pid in processes} == {expected}
    job = enqueue("test_sleep", {"user_id": user.pk})
    assert wait_for_job(job.pk).status == "succeeded"


def test_retries_back_off_2s_then_4s(cluster, user):
    cluster.start()
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 2})
    starts, scheduled = [], []

    def observe():
        current = job_state(job.id)
        if current.started_at and current.started_at not in starts:
            starts.append(current.started_at)
        if current.status == "retrying" and current.run_after not in scheduled:
            scheduled.append(current.run_after)
        return current.is_finished

    wait_for(observe, 30, interval=0.02, message="flaky job")
    final = job_state(job.id)
    assert (final.status, final.attempts) == ("succeeded", 3)
    assert len(starts) == 3 and len(scheduled) == 2
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert 2.0 <= gaps[0] <= 3.0, gaps
    assert 4.0 <= gaps[1] <= 5.0, gaps
    lateness = [
        (start - due).total_seconds() for start, due in zip(starts[1:], scheduled, strict=True)
    ]
    assert all(0 <= late <= 1.0 for late in lateness), lateness


def test_a_waiting_retry_survives_a_full_restart_of_the_cluster(cluster, user):
    first = cluster.start()
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    wait_for_job(job.id, until="retrying", timeout=20)
    first.stop()
    assert first.process.returncode is not None
    time.sleep(2.5)  # the retry falls due while no worker runs
    assert job_state(job.id).status == "retrying"
    cluster.start()
    final = wait_for_job(job.id, timeout=20)
    assert (final.status, final.attempts) == ("succeeded", 2)


def test_sigkill_of_a_worker_mid_delete_rolls_back_and_the_job_completes(cluster, user):
    doomed = make_conversation(user, messages=200)
    kept = make_conversation(user)
    cluster.start(workers=2, timeout=5, extra_env=FAST_RECOVERY)
    # Hold a lock on one message so the worker's delete blocks mid-transaction.
    blocker = database_session()
    blocker.execute(
        "SELECT id FROM chat_message WHERE conversation_id = %s LIMIT 1 FOR UPDATE", [doomed.pk]
    )
    job_id = token_client(user).delete(f"/api/chat/conversations/{doomed.pk}").json()["job_id"]
    with connection.cursor() as cursor:

        def worker_waits_on_lock():
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%%DELETE FROM \"chat_message\"%%'"
            )
            return cursor.fetchone()[0]

        wait_for(worker_waits_on_lock, 20, message="the delete to block")
    running = job_state(job_id)
    assert running.status == "running"
    os.kill(int(running.worker.rsplit(":", 1)[1]), signal.SIGKILL)
    time.sleep(0.5)
    blocker.rollback()
    blocker.close()

    final = wait_for_job(job_id)
    assert (final.status, final.attempts) == ("succeeded", 2)
    assert not Conversation.objects.filter(pk=doomed.pk).exists()
    assert not Message.objects.filter(conversation_id=doomed.pk).exists()
    assert Message.objects.filter(conversation=kept).count() == 3


def test_a_job_that_kills_its_worker_every_time_fails_after_3_attempts(cluster, user):
    cluster.start(workers=2, timeout=2, extra_env=FAST_RECOVERY)
    job = enqueue("test_poison", {"user_id": user.pk})
    final = wait_for_job(job.id)
    assert (final.status, final.attempts, final.last_error_class) == ("failed", 3, "WorkerLost")
    # The cluster replaced its workers and still works.
    follow_up = enqueue("test_sleep", {"user_id": user.pk})
    assert wait_for_job(follow_up.id, timeout=20).status == "succeeded"


def test_two_clusters_share_1000_jobs_none_lost_or_doubled(cluster, user):
    """Two worker hosts on one PostgreSQL, as two clusters of this machine.

    Both are running before the jobs arrive: one cluster alone drains 1,000 empty jobs in
    about the time the other takes to boot. Each job takes 5 ms, so the drain lasts long
    enough that both must claim.
    """
    one = cluster.start(workers=4, extra_env=KEEP_ALL_JOBS)
    two = cluster.start(workers=4, extra_env=KEEP_ALL_JOBS)
    jobs = enqueue_many("test_sleep", [{"user_id": user.pk, "seconds": 0.005}] * 1000)
    wait_for_jobs([j.pk for j in jobs], timeout=180, interval=0.5)
    finished = Job.objects.filter(pk__in=[j.pk for j in jobs])
    assert finished.filter(status="succeeded", attempts=1).count() == 1000
    pids_by_cluster = [set(c.worker_pids()) for c in (one, two)]
    used = {int(w.rsplit(":", 1)[1]) for w in finished.values_list("worker", flat=True)}
    assert all(used & pids for pids in pids_by_cluster), "both clusters took work"


def test_save_message_racing_delete_never_leaves_an_orphan_message(cluster, user):
    cluster.start(workers=6)
    conversations = [make_conversation(user, messages=1) for _ in range(30)]
    jobs = []
    for conversation in conversations:
        for n in range(3):
            jobs.append(
                enqueue(
                    "save_message",
                    {
                        "user_id": user.pk,
                        "conversation_id": conversation.pk,
                        "role": "user",
                        "content": f"late {n}",
                    },
                )
            )
        jobs.append(services.request_conversation_deletion(conversation, request_id="race"))
    wait_for_jobs([job.id for job in jobs])
    ids = [c.pk for c in conversations]
    assert not Conversation.objects.filter(pk__in=ids).exists()
    assert not Message.objects.filter(conversation_id__in=ids).exists()
    assert orphan_message_count() == 0
    deletes = Job.objects.filter(job_type="delete_conversation")
    assert deletes.filter(status="succeeded").count() == 30


def test_50_simultaneous_deletes_make_one_200_and_one_job(live_server, user):
    conversation = make_conversation(user)
    token = token_client(user)._credentials["HTTP_AUTHORIZATION"]
    url = f"{live_server.url}/api/chat/conversations/{conversation.pk}"
    barrier = threading.Barrier(50)

    def delete():
        with requests.Session() as session:
            barrier.wait(30)
            return session.delete(url, headers={"Authorization": token}, timeout=30).status_code

    assert sorted(in_threads(delete, 50)) == [200] + [404] * 49
    assert Job.objects.filter(job_type="delete_conversation").count() == 1
    assert Conversation.objects.get(pk=conversation.pk).deletion_requested_at <= timezone.now()
