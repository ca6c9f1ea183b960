"""`async def` handlers and `@task` functions, run in process by the runner: awaited, their
queries in the attempt's transaction, cut off by the queue's timeout, stopped on request.
Real clusters: tests/processes/test_async_and_retries.py."""

from dataclasses import replace

import pytest
from django.utils import timezone

from chat.models import Conversation
from queues.api import JobData, enqueue, job_type, raise_if_stop_requested
from queues.core import registry
from queues.execution import coroutines
from queues.execution.runner import run_job
from queues.models import Job
from tests.support import tasks
from tests.support.cluster import database_session

pytestmark = pytest.mark.django_db

# Another session holds the conversation's row, as a long transaction would.
LOCK_CONVERSATION = "SELECT id FROM chat_conversation WHERE id = %s FOR UPDATE"


def run_due(job_id):
    """Run the job's next attempt now, whatever its backoff."""
    Job.objects.filter(pk=job_id).update(run_after=timezone.now())
    run_job(job_id)
    return Job.objects.get(pk=job_id)


def test_an_async_handler_is_awaited_and_its_writes_commit_with_its_success(user):
    job = enqueue("test_async_write", {"user_id": user.pk})
    done = run_due(job.pk)
    assert (done.status, done.attempts) == ("succeeded", 1)
    assert (done.progress, done.progress_message) == (50, "conversation written")
    conversation = Conversation.objects.get(pk=done.result["conversation_id"])
    assert (conversation.owner_id, conversation.title) == (user.pk, "written by async attempt 1")


def test_an_async_handler_that_raises_is_retried_and_its_writes_roll_back(user):
    job = enqueue("test_async_write", {"user_id": user.pk, "fail_times": 1})
    failed = run_due(job.pk)
    assert (failed.status, failed.last_error_class) == ("retrying", "RuntimeError")
    assert "simulated bug on attempt 1" in failed.traceback
    assert not Conversation.objects.exists()

    done = run_due(job.pk)
    assert (done.status, done.attempts) == ("succeeded", 2)
    assert list(Conversation.objects.values_list("title", flat=True)) == [
        "written by async attempt 2"
    ]


def test_an_async_handler_past_its_queues_timeout_is_cancelled_and_rolled_back(user, settings):
    settings.QUEUES = {"database": {"timeout": 0.2}}
    job = enqueue("test_async_write", {"user_id": user.pk, "seconds": 30})
    failed = run_due(job.pk)
    assert (failed.status, failed.last_error_class) == ("retrying", "JobTimeout")
    assert "timeout of 0.2s" in failed.last_error
    assert not Conversation.objects.exists()
    assert coroutines._current is None  # nothing left running for the next job's timer


def test_an_async_handler_stops_at_a_stop_request_and_writes_nothing(user):
    job = enqueue("test_async_write", {"user_id": user.pk})
    Job.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    stopped = run_due(job.pk)
    assert stopped.status == "cancelled"
    assert not Conversation.objects.exists()


def test_a_query_made_directly_from_a_coroutine_fails_clearly_and_is_retried(user, monkeypatch):
    async def queries_synchronously(data):
        return Conversation.objects.count()  # must go through sync_to_async

    kind = registry.find("test_async_write")
    monkeypatch.setitem(registry._types, kind.name, replace(kind, handler=queries_synchronously))
    failed = run_due(enqueue("test_async_write", {"user_id": user.pk}).pk)
    # Django's own error, as in an async view: a bug of the handler, retried like any.
    assert (failed.status, failed.last_error_class) == ("retrying", "SynchronousOnlyOperation")


def test_the_synchronous_stop_check_in_a_coroutine_says_which_one_to_await(user, monkeypatch):
    async def checks_synchronously(data):
        raise_if_stop_requested()

    kind = registry.find("test_async_write")
    monkeypatch.setitem(registry._types, kind.name, replace(kind, handler=checks_synchronously))
    failed = run_due(enqueue("test_async_write", {"user_id": user.pk}).pk)
    assert (failed.status, failed.last_error_class) == ("retrying", "TypeError")
    assert "awaits araise_if_stop_requested()" in failed.last_error


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_async_handlers_query_past_the_timeout_is_cancelled_and_its_lock_wait_ends(
    user, settings, monkeypatch
):
    """The timer cancels the query the coroutine waits on (on the worker's connection) as well as
    its task: the attempt ends with `JobTimeout`, and the row it waited for is untouched."""
    settings.QUEUES = {"database": {"timeout": 0.3}}
    conversation = Conversation.objects.create(owner=user, title="held")

    async def waits_for_a_lock(data):
        await Conversation.objects.filter(pk=conversation.pk).aupdate(title="changed")

    kind = registry.find("test_async_write")
    monkeypatch.setitem(registry._types, kind.name, replace(kind, handler=waits_for_a_lock))
    job = enqueue("test_async_write", {"user_id": user.pk})
    with database_session() as other:
        other.execute(LOCK_CONVERSATION, [conversation.pk])
        failed = run_due(job.pk)
    assert (failed.status, failed.last_error_class) == ("retrying", "JobTimeout")
    assert "timeout of 0.3s" in failed.last_error
    conversation.refresh_from_db()
    assert conversation.title == "held"


@pytest.mark.parametrize("kind", ["async generator", "generator"])
def test_a_generator_handler_is_refused_when_declared(kind):
    if kind == "generator":

        def handler(data):
            yield data

    else:

        async def handler(data):
            yield data

    with pytest.raises(TypeError, match="is a generator: a job has one result"):
        job_type("test_refused_generator", queue="database", schema=JobData)(handler)
    assert registry.find("test_refused_generator") is None


def test_an_async_task_is_awaited_and_retried_after_a_connection_error():
    result = tasks.fetch_flaky.enqueue(fail_times=1)
    failed = run_due(result.id)
    assert (failed.status, failed.last_error_class) == ("retrying", "ConnectionError")
    done = run_due(result.id)
    assert (done.status, done.attempts, done.result) == ("succeeded", 2, 2)
