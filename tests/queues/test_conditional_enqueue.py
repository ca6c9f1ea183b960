"""`enqueue_if`: a job stored only if a condition (a conditional change) returns a row, atomically
with it; on PostgreSQL one statement, so a deletion request pays no BEGIN and COMMIT."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django_q.models import OrmQ

from chat.models import Conversation
from queues.api import JobValidationError, enqueue, enqueue_if
from queues.core.selectors import counter_totals
from queues.models import Job

pytestmark = pytest.mark.django_db


def rename(conversation_id, title):
    """A change: the conversation renamed, if it exists (a queryset and the values to set)."""
    return Conversation.objects.filter(pk=conversation_id), {"title": title}


def enqueued(job_type):
    return counter_totals().get(("database", job_type, "enqueued"), 0)


def test_a_condition_that_returns_a_row_stores_the_job_with_its_broker_row_and_counts(
    user, conversation
):
    job = enqueue_if(
        *rename(conversation.pk, "renamed"), "test_sleep", {"user_id": user.pk, "seconds": 0}
    )

    stored = Job.objects.get(pk=job.pk)
    assert (stored.status, stored.job_type, stored.broker_row) == (
        "queued",
        "test_sleep",
        job.broker_row,
    )
    assert OrmQ.objects.filter(pk=job.broker_row).exists()
    assert Conversation.objects.get(pk=conversation.pk).title == "renamed"
    assert enqueued("test_sleep") == 1


def test_a_condition_that_returns_nothing_stores_and_counts_nothing(user):
    job = enqueue_if(*rename(10**9, "renamed"), "test_sleep", {"user_id": user.pk})

    assert job is None
    assert not Job.objects.exists() and not OrmQ.objects.exists()
    assert enqueued("test_sleep") == 0


def test_invalid_data_is_refused_before_the_condition_changes_anything(user, conversation):
    with pytest.raises(JobValidationError):
        enqueue_if(
            *rename(conversation.pk, "renamed"), "test_sleep", {"user_id": user.pk, "seconds": -1}
        )
    with pytest.raises(JobValidationError):
        enqueue_if(*rename(conversation.pk, "renamed"), "no_such_type", {"user_id": user.pk})

    assert Conversation.objects.get(pk=conversation.pk).title == conversation.title
    assert not Job.objects.exists()


def test_a_unique_duplicate_makes_the_change_and_returns_the_live_job(user, conversation):
    first = enqueue("test_unique", {"user_id": user.pk, "name": "report"})

    job = enqueue_if(
        *rename(conversation.pk, "again"), "test_unique", {"user_id": user.pk, "name": "report"}
    )

    assert Conversation.objects.get(pk=conversation.pk).title == "again"
    assert job.pk == first.pk and job.deduplicated
    assert Job.objects.count() == 1 and OrmQ.objects.count() == 1
    assert enqueued("test_unique") == 1


def test_a_rollback_of_the_callers_transaction_withdraws_both(user, conversation):
    with transaction.atomic():
        enqueue_if(*rename(conversation.pk, "renamed"), "test_sleep", {"user_id": user.pk})
        transaction.set_rollback(True)

    assert Conversation.objects.get(pk=conversation.pk).title == conversation.title
    assert not Job.objects.exists() and not OrmQ.objects.exists()


@pytest.mark.postgres
def test_on_postgresql_the_change_and_the_job_are_one_statement_outside_any_transaction(
    user, conversation
):
    data = {"user_id": user.pk}
    with CaptureQueriesContext(connection) as queries:
        job = enqueue_if(*rename(conversation.pk, "renamed"), "test_sleep", data, user_checked=True)

    statements = [q["sql"] or "" for q in queries.captured_queries]
    assert len(statements) == 1, statements
    assert "UPDATE" in statements[0] and "INSERT" in statements[0]
    assert Job.objects.filter(pk=job.pk).exists()


@pytest.mark.postgres
def test_on_postgresql_a_deletion_request_marks_and_enqueues_in_one_statement(api, conversation):
    with CaptureQueriesContext(connection) as queries:
        response = api.delete(f"/api/chat/conversations/{conversation.pk}")

    assert response.status_code == 200
    statements = [q["sql"] or "" for q in queries.captured_queries]
    # The token's lookup, mark + enqueue, then the withdrawal of messages waiting to be saved.
    assert len(statements) == 3, statements
    assert not any(s.strip().upper() in {"BEGIN", "COMMIT"} for s in statements)
    assert '"chat_conversation"' in statements[1] and '"queues_job"' in statements[1]
    assert "save_message" in statements[2]
    job = Job.objects.get(pk=response.json()["job_id"])
    assert job.job_type == "delete_conversation" and OrmQ.objects.filter(pk=job.broker_row)
    assert Conversation.objects.get(pk=conversation.pk).deletion_requested_at is not None


def test_on_redis_the_condition_and_the_job_share_one_transaction(
    redis_queue, user, conversation, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):  # the push to Redis waits for them
        job = enqueue_if(*rename(conversation.pk, "renamed"), "test_sleep", {"user_id": user.pk})

    assert Conversation.objects.get(pk=conversation.pk).title == "renamed"
    assert Job.objects.filter(pk=job.pk, status="queued").exists()
    assert not OrmQ.objects.exists()  # the delivery is in Redis
    assert redis_queue.queue_size() == 1
