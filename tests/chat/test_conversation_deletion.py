"""DELETE /api/chat/conversations/{id}: hide at once, one job, all or nothing; the job's service."""

from unittest import mock

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, connection
from django.db.models.signals import post_delete, pre_delete
from django.test.utils import CaptureQueriesContext
from django_q.models import OrmQ

from chat import services
from chat.apps import _conversation_deleted
from chat.models import Conversation, Message
from queues.errors import PermanentJobError
from queues.models import Job
from tests.support.data import make_conversation

pytestmark = pytest.mark.django_db


def test_delete_answers_ok_with_the_job_id_and_hides_the_conversation(api, conversation):
    response = api.delete(f"/api/chat/conversations/{conversation.pk}", HTTP_X_REQUEST_ID="req-1")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    job = Job.objects.get()
    assert body["job_id"] == str(job.id)
    assert (job.queue, job.job_type, job.status) == ("database", "delete_conversation", "queued")
    assert job.data == {
        "conversation_id": conversation.pk,
        "user_id": conversation.owner_id,
        "request_id": "req-1",
    }
    assert job.request_id == "req-1" and job.user_id == conversation.owner_id
    assert OrmQ.objects.filter(key="database").count() == 1
    # Gone for every API call from now on; the rows wait for the worker.
    base = f"/api/chat/conversations/{conversation.pk}"
    assert api.get(base).status_code == 404
    assert api.patch(base, {"title": "x"}, format="json").status_code == 404
    assert api.get(f"{base}/messages").status_code == 404
    assert api.delete(base).status_code == 404
    assert api.get("/api/chat/conversations").json()["count"] == 0
    assert Message.objects.filter(conversation=conversation).count() == 3
    assert Job.objects.count() == 1


def test_job_id_from_delete_works_on_the_job_status_endpoint(api, conversation):
    job_id = api.delete(f"/api/chat/conversations/{conversation.pk}").json()["job_id"]
    response = api.get(f"/api/queues/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert "traceback" not in response.json()


@pytest.mark.django_db(transaction=True)  # the request's own transaction, as in production
def test_failure_inside_the_transaction_leaves_neither_marker_nor_job(api, conversation):
    # The database refuses the broker row (no payload) after the conversation was marked: on
    # PostgreSQL inside the one statement, on SQLite inside the transaction.
    with (
        mock.patch("queues.django_q2.push._payload", return_value=None),
        pytest.raises(IntegrityError),
    ):
        api.delete(f"/api/chat/conversations/{conversation.pk}")
    conversation.refresh_from_db()
    assert conversation.deletion_requested_at is None
    assert Job.objects.count() == 0
    assert OrmQ.objects.count() == 0


def test_delete_service_removes_conversation_and_messages_only(user, other_user, conversation):
    kept = Conversation.objects.create(owner=user, title="Kept")
    Message.objects.create(conversation=kept, role="user", content="stay")
    theirs = Conversation.objects.create(owner=other_user, title="Theirs")
    Message.objects.create(conversation=theirs, role="user", content="stay")

    result = services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)

    assert result == {"deleted": True, "conversation_id": conversation.pk, "messages": 3}
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
    assert Message.objects.count() == 2


def test_delete_service_is_idempotent(user, conversation):
    services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    again = services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    assert again == {"deleted": False, "conversation_id": conversation.pk}


def test_delete_service_refuses_a_wrong_owner_and_deletes_nothing(other_user, conversation):
    with pytest.raises(PermanentJobError):
        services.delete_conversation(conversation_id=conversation.pk, user_id=other_user.pk)
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    assert Message.objects.filter(conversation=conversation).count() == 3


def test_hand_written_deletion_covers_every_relation_and_listener():
    """`services.delete_conversation` deletes with two statements instead of Django's collector:
    that holds only while messages are all that refers to a conversation, nothing listens to the
    deletion of either model but the erasure, which that path runs itself."""
    assert [rel.related_model for rel in Conversation._meta.related_objects] == [Message]
    assert not Message._meta.related_objects
    assert not pre_delete.has_listeners(Conversation) and not pre_delete.has_listeners(Message)
    assert not post_delete.has_listeners(Message)
    sync_receivers, async_receivers = post_delete._live_receivers(Conversation)
    assert sync_receivers == [_conversation_deleted] and not async_receivers


def test_a_deletion_with_nothing_to_erase_sends_one_statement(user, conversation):
    """PostgreSQL: both DELETEs in one statement (a data-modifying CTE); SQLite: one each."""
    ContentType.objects.get_for_model(Conversation)  # a per-process cache, warm in a worker
    with CaptureQueriesContext(connection) as queries:
        result = services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    statements = [q["sql"] for q in queries.captured_queries]
    expected = 1 if connection.vendor == "postgresql" else 2
    assert len(statements) == expected, statements
    assert all("DELETE FROM" in sql for sql in statements), statements
    assert result["messages"] == 3  # counted: the fixture's bulk insert left `message_count` at 0


def test_a_deletion_erases_the_content_job_records_keep(user, conversation):
    saved = Job.objects.create(
        queue="database",
        job_type="save_message",
        data={"conversation_id": conversation.pk, "user_id": user.pk, "content": "secret"},
        subject=Conversation.subject_for(conversation.pk),
        max_attempts=3,
    )
    services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    saved.refresh_from_db()
    assert saved.data == {"conversation_id": conversation.pk, "user_id": user.pk}


def test_many_messages_go_in_a_statement_of_their_own_and_are_still_counted(user, conversation):
    """A CTE's count costs per row: a conversation whose count says "many" takes two statements."""
    many = services.DELETE_IN_ONE_STATEMENT_UP_TO + 1
    Conversation.objects.filter(pk=conversation.pk).update(message_count=many)
    with CaptureQueriesContext(connection) as queries:
        result = services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    assert len(queries) == 2, [q["sql"][:60] for q in queries]
    assert result["messages"] == 3  # what the DELETE deleted, not `message_count`
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()


def test_a_deletion_erases_what_the_admin_log_keeps_of_it(user, conversation):
    entry = LogEntry.objects.create(
        user=user,
        content_type=ContentType.objects.get_for_model(Conversation),
        object_id=str(conversation.pk),
        object_repr="Doomed secret title",
        action_flag=CHANGE,
    )
    services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    entry.refresh_from_db()
    assert entry.object_repr == f"Conversation {conversation.pk}"


def _queries_to_delete(user, messages):
    conversation = make_conversation(user, title="Sized", messages=messages)
    with CaptureQueriesContext(connection) as queries:
        services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    return [q["sql"] for q in queries.captured_queries]


def test_deleting_1000_messages_costs_the_same_few_queries_as_one(user):
    ContentType.objects.get_for_model(Conversation)  # a per-process cache, warm in a worker
    one = _queries_to_delete(user, 1)
    thousand = _queries_to_delete(user, 1000)
    assert len(thousand) == len(one) <= 8, thousand
    # Messages go in one statement, never loaded into Python.
    message_table = Message._meta.db_table
    assert not any(sql.startswith("SELECT") and message_table in sql for sql in thousand)
    assert sum(1 for sql in thousand if f'DELETE FROM "{message_table}"' in sql) == 1
