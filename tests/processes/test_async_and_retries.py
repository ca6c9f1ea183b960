"""`async def` handlers and retry policies on real `qcluster` processes, on PostgreSQL and
SQLite: awaited in the worker with their writes in the attempt's transaction, cut off by the
timeout; any error retried with backoff, except the ones a type declares permanent.
In process: tests/queues/test_async_handlers.py, tests/queues/test_retry_policy.py."""

import pytest
from django_tasks import TaskResultStatus

from chat.models import Conversation
from queues.api import enqueue
from tests.support import tasks
from tests.support.cluster import FAST_RECOVERY, wait_for
from tests.support.jobs import wait_for_job, wait_for_jobs

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def test_async_handlers_run_and_every_error_retries_unless_its_type_gives_up(cluster, user):
    cluster.start(workers=2)
    writes = enqueue("test_async_write", {"user_id": user.pk, "fail_times": 1})
    unreachable = enqueue("test_unreachable", {"user_id": user.pk, "fail_times": 2})
    gives_up = enqueue("test_gives_up", {"user_id": user.pk, "fail_times": 1})
    task = tasks.fetch_flaky.enqueue(fail_times=1)  # an async @task, default policy

    writes, unreachable, gives_up = wait_for_jobs([writes.pk, unreachable.pk, gives_up.pk])

    # The async handler's first attempt raised (a bug): retried, its write rolled back; the
    # second one's write committed with its success.
    assert (writes.status, writes.attempts, writes.last_error_class) == (
        "succeeded",
        2,
        "RuntimeError",
    )
    (conversation,) = Conversation.objects.filter(owner=user)
    assert (conversation.pk, conversation.title) == (
        writes.result["conversation_id"],
        "written by async attempt 2",
    )
    # An HTTP client's ConnectionError retries with backoff until the host answers.
    assert (unreachable.status, unreachable.attempts, unreachable.last_error_class) == (
        "succeeded",
        3,
        "ConnectionError",
    )
    # The error its type declares never worth a retry fails the job at once.
    assert (gives_up.status, gives_up.attempts, gives_up.last_error_class) == (
        "failed",
        1,
        "ValueError",
    )

    def task_finished():
        task.refresh()
        return task.is_finished

    wait_for(task_finished, 60, message="the async task")
    assert (task.status, task.attempts, task.return_value) == (TaskResultStatus.SUCCESSFUL, 2, 2)
    assert task.errors[0].exception_class_path == "builtins.ConnectionError"


def test_an_async_handler_past_its_timeout_is_cancelled_and_its_worker_goes_on(cluster, user):
    cluster.start(workers=1, timeout=1)
    job = enqueue("test_async_write", {"user_id": user.pk, "seconds": 60})
    final = wait_for_job(job.pk, timeout=60)
    assert (final.status, final.attempts, final.last_error_class) == ("failed", 3, "JobTimeout")
    assert not Conversation.objects.exists()  # each attempt's write rolled back
    # The same worker process runs the next job: the coroutine was cancelled, not its worker
    # killed by django-q2's guard.
    follow_up = wait_for_job(enqueue("test_async_write", {"user_id": user.pk}).pk, timeout=30)
    assert (follow_up.status, follow_up.attempts) == ("succeeded", 1)
    assert follow_up.worker == final.worker


@pytest.mark.postgres  # the lost worker is found by its liveness lock, as in test_faults
def test_an_async_handler_blocking_its_loop_has_its_worker_replaced(cluster, user):
    qcluster = cluster.start(workers=1, timeout=2, extra_env=FAST_RECOVERY)
    workers_before = set(qcluster.worker_pids())
    job = enqueue("test_async_blocking", {"user_id": user.pk, "seconds": 60})
    final = wait_for_job(job.pk, timeout=90)
    assert (final.status, final.attempts, final.last_error_class) == ("failed", 2, "WorkerLost")
    assert set(qcluster.worker_pids()) - workers_before, "the guard started a new worker"
    follow_up = wait_for_job(enqueue("test_async_write", {"user_id": user.pk}).pk, timeout=30)
    assert follow_up.status == "succeeded"
