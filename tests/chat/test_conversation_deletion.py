"""DELETE /api/chat/conversations/{id}: hide at once, one job, all or nothing; the job's service."""

from unittest import mock

import pytest
from django.apps import apps
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, connection, models
from django.db.models.signals import post_delete, pre_delete
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ

from chat import jobs as chat_jobs
from chat import services
from chat.models import Conversation, Message
from queues.api import enqueue
from queues.errors import PermanentJobError
from queues.execution.runner import run_job
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


def test_delete_hides_that_conversation_only_and_only_for_its_owner(api, user, other_user):
    doomed, kept = make_conversation(user), make_conversation(user)
    assert services.request_deletion(doomed.pk, owner_id=other_user.pk, request_id="x") is None
    assert not Conversation.objects.filter(deletion_requested_at__isnull=False).exists()

    assert api.delete(f"/api/chat/conversations/{doomed.pk}").status_code == 200
    assert [c["id"] for c in api.get("/api/chat/conversations").json()["results"]] == [kept.pk]
    assert Conversation.objects.get(pk=kept.pk).deletion_requested_at is None


def test_a_message_still_waiting_when_the_deletion_is_requested_is_withdrawn(api, user):
    doomed, kept = make_conversation(user), make_conversation(user)

    def waiting_message(conversation):
        data = {"user_id": user.pk, "conversation_id": conversation.pk, "role": "user"}
        return enqueue("save_message", {**data, "content": "x"})

    withdrawn, elsewhere = waiting_message(doomed), waiting_message(kept)
    assert api.delete(f"/api/chat/conversations/{doomed.pk}").status_code == 200
    assert Job.objects.get(pk=withdrawn.pk).status == "cancelled"
    assert Job.objects.get(pk=elsewhere.pk).status == "queued"


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
        mock.patch("queues.django_q2.payload.payload", return_value=None),
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


def run_due(job):
    Job.objects.filter(pk=job.pk).update(run_after=timezone.now())
    run_job(job.pk)
    job.refresh_from_db()
    return job.status


def test_a_deletion_job_for_someone_elses_conversation_fails_at_once(other_user, conversation):
    job = services.request_conversation_deletion(conversation, request_id="theirs")
    Job.objects.filter(pk=job.pk).update(
        user=other_user, data={**job.data, "user_id": other_user.pk}
    )
    assert run_due(job) == "failed"
    assert (job.attempts, job.last_error_class) == (1, "PermanentJobError")


def test_a_deletion_failing_with_a_bug_is_retried_then_fails_for_good(conversation, monkeypatch):
    """The default retry policy: two more attempts (after 2 s, then 4 s), then failed, where the
    sweeper and operators see it; the conversation stays hidden and whole meanwhile."""

    def buggy(**ids):
        raise AttributeError("a bug in the deletion")

    job = services.request_conversation_deletion(conversation, request_id="bug")
    monkeypatch.setattr(chat_jobs.services, "delete_conversation", buggy)
    assert [run_due(job) for _ in range(3)] == ["retrying", "retrying", "failed"]
    assert (job.attempts, job.last_error_class) == (3, "AttributeError")
    assert Message.objects.filter(conversation=conversation).count() == 3


@pytest.fixture
def bookmark_model(transactional_db):
    """A throwaway model referring to conversations with `on_delete=CASCADE`, and its table, as a
    new app's model would: registered for this test only (SQLite creates tables outside a
    transaction, hence `transactional_db`)."""

    class Bookmark(models.Model):
        conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE)

        class Meta:
            app_label = "chat"
            db_table = "test_throwaway_bookmark"

        def __str__(self) -> str:
            return f"Bookmark {self.pk}"

    with connection.schema_editor() as editor:
        editor.create_model(Bookmark)
    try:
        yield Bookmark
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Bookmark)
        del apps.all_models["chat"][Bookmark._meta.model_name]
        apps.clear_cache()


def test_the_deletion_job_deletes_what_a_new_model_cascades_from_a_conversation(
    bookmark_model, user, other_user
):
    conversation = make_conversation(user)
    kept = make_conversation(other_user)
    bookmark_model.objects.bulk_create(
        [bookmark_model(conversation=c) for c in (conversation, conversation, kept)]
    )
    job = services.request_conversation_deletion(conversation, request_id="cascade")
    assert job.request_id == "cascade"
    trace = admin_log_entry(user, conversation)

    with mock.patch("chat.services.erase_traces", wraps=services.erase_traces) as erase:
        run_job(job.pk)

    job.refresh_from_db()
    assert job.status == "succeeded", job.last_error
    assert job.result == {"deleted": True, "conversation_id": conversation.pk, "messages": 3}
    assert not bookmark_model.objects.filter(conversation_id=conversation.pk).exists()
    assert bookmark_model.objects.filter(conversation_id=kept.pk).count() == 1
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert erase.call_args_list == [mock.call(conversation.pk)]
    trace.refresh_from_db()
    assert trace.object_repr == f"Conversation {conversation.pk}"


@pytest.mark.parametrize("signal", [pre_delete, post_delete], ids=["pre_delete", "post_delete"])
def test_with_a_receiver_of_its_deletion_the_collector_deletes_alike(signal, user, other_user):
    """A receiver of a conversation's deletion (other than the erasure) takes the deletion off the
    fast path, to Django's collector, which calls it: the same refusal, result and rows gone."""
    doomed, empty, kept = (make_conversation(user, messages=n) for n in (3, 0, 2))
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance.pk)

    signal.connect(receiver, sender=Conversation)
    try:
        with pytest.raises(PermanentJobError):
            services.delete_conversation(conversation_id=doomed.pk, user_id=other_user.pk)
        results = [
            services.delete_conversation(conversation_id=c.pk, user_id=user.pk)
            for c in (doomed, empty)
        ]
    finally:
        signal.disconnect(receiver, sender=Conversation)

    assert results == [
        {"deleted": True, "conversation_id": doomed.pk, "messages": 3},
        {"deleted": True, "conversation_id": empty.pk, "messages": 0},
    ]
    assert seen == [doomed.pk, empty.pk]
    assert list(Conversation.objects.values_list("pk", flat=True)) == [kept.pk]
    assert Message.objects.filter(conversation_id=kept.pk).count() == Message.objects.count() == 2


def admin_log_entry(user, conversation):
    """A trace for `erase_traces` to erase: an admin log entry naming the conversation's title."""
    return LogEntry.objects.create(
        user=user,
        content_type=ContentType.objects.get_for_model(Conversation),
        object_id=str(conversation.pk),
        object_repr=conversation.title,
        action_flag=CHANGE,
    )


DELETION_PATHS = {
    "service": lambda c: services.delete_conversation(conversation_id=c.pk, user_id=c.owner_id),
    "instance": lambda c: c.delete(),
    "queryset": lambda c: Conversation.objects.filter(pk=c.pk).delete(),
    "owner": lambda c: c.owner.delete(),
}


@pytest.mark.parametrize("path", DELETION_PATHS)
def test_every_path_erases_the_traces_of_a_deletion_exactly_once(path, user, conversation):
    conversation_id = conversation.pk  # `delete()` sets it to None
    admin_log_entry(user, conversation)
    with mock.patch("chat.services.erase_traces", wraps=services.erase_traces) as erase:
        DELETION_PATHS[path](conversation)
    assert erase.call_args_list == [mock.call(conversation_id)]
    assert not Conversation.objects.filter(pk=conversation_id).exists()


def test_an_already_deleted_conversation_still_has_its_traces_erased(user, conversation):
    services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    with mock.patch("chat.services.erase_traces", wraps=services.erase_traces) as erase:
        again = services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    assert again == {"deleted": False, "conversation_id": conversation.pk}
    assert erase.call_args_list == [mock.call(conversation.pk)]


def test_the_message_count_is_what_was_deleted_not_message_count(user, conversation):
    Conversation.objects.filter(pk=conversation.pk).update(message_count=5000)
    result = services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    assert result["messages"] == 3


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


def test_a_deletion_erases_what_the_admin_log_keeps_of_it(user, conversation):
    def logged(model, object_id, title):
        return LogEntry.objects.create(
            user=user,
            content_type=ContentType.objects.get_for_model(model),
            object_id=str(object_id),
            object_repr=title,
            action_flag=CHANGE,
        )

    entry = logged(Conversation, conversation.pk, "Doomed secret title")
    # Entries of another conversation, and of another model with the same id, stay as they are.
    other = logged(Conversation, make_conversation(user).pk, "Kept title")
    same_id = logged(Job, conversation.pk, "A job")
    services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    entry.refresh_from_db()
    assert entry.object_repr == f"Conversation {conversation.pk}"
    assert LogEntry.objects.get(pk=other.pk).object_repr == "Kept title"
    assert LogEntry.objects.get(pk=same_id.pk).object_repr == "A job"


def _queries_to_delete(user, messages):
    conversation = make_conversation(user, title="Sized", messages=messages)
    with CaptureQueriesContext(connection) as queries:
        result = services.delete_conversation(conversation_id=conversation.pk, user_id=user.pk)
    assert result["messages"] == messages
    return [q["sql"] for q in queries.captured_queries]


def test_deleting_1000_messages_sends_the_same_statements_as_20(user):
    """Messages are deleted by one `DELETE ... WHERE conversation_id = ...`, never loaded, whatever
    their number: the deletion job's own path (PostgreSQL: one statement, the conversation's DELETE
    with the messages' as a CTE and the question to the queue; SQLite: one after the other, then
    the question)."""
    ContentType.objects.get_for_model(Conversation)  # a per-process cache, warm in a worker
    twenty = _queries_to_delete(user, 20)
    thousand = _queries_to_delete(user, 1000)
    expected = 1 if connection.vendor == "postgresql" else 3
    assert len(thousand) == len(twenty) == expected, thousand
    message_table = connection.ops.quote_name(Message._meta.db_table)
    reads = [s for s in thousand if s.count(f"FROM {message_table}") > s.count("DELETE FROM")]
    assert reads == [], thousand
    assert sum(f"DELETE FROM {message_table} WHERE" in sql for sql in thousand) == 1, thousand
    # Nothing to erase here: the question to the queue is in the last statement, no erasure follows.
    assert [sql for sql in thousand if "queues_job" in sql] == [thousand[-1]]
