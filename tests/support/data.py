"""Chat data that several tests make, and the checks they make on it."""

from django.db import connection

from chat import services
from chat.models import Conversation, Message
from queues.models import Job


def make_conversation(owner, *, title="Chat", messages=3):
    """A conversation of `owner` holding `messages` user messages, "m0", "m1", ..."""
    conversation = Conversation.objects.create(owner=owner, title=title, message_count=messages)
    Message.objects.bulk_create(
        Message(conversation=conversation, role="user", content=f"m{i}") for i in range(messages)
    )
    return conversation


def big_conversation(owner, messages: int, *, title="Big"):
    """A conversation of `owner` with `messages` messages written by one INSERT (PostgreSQL):
    hundreds of thousands in a second or two, where `make_conversation` would take minutes."""
    conversation = Conversation.objects.create(owner=owner, title=title)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Message._meta.db_table} (conversation_id, role, content, created_at)"
            " SELECT %s, 'user', 'm' || n, now() FROM generate_series(1, %s) n",
            [conversation.pk, messages],
        )
    return conversation


def request_deletions(owner, count, messages=3):
    """`count` conversations of `owner` whose deletion is requested: (conversation ids, job ids)."""
    conversations = Conversation.objects.bulk_create(
        Conversation(owner=owner, title=f"Doomed {n}") for n in range(count)
    )
    Message.objects.bulk_create(
        Message(conversation=c, role="user", content=f"m{i}")
        for c in conversations
        for i in range(messages)
    )
    jobs = [
        services.request_conversation_deletion(c, request_id=f"fault-{c.pk}") for c in conversations
    ]
    return [c.pk for c in conversations], [j.pk for j in jobs]


def orphan_message_count():
    """Messages whose conversation no longer exists (the foreign key should make this 0)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM chat_message m "
            "LEFT JOIN chat_conversation c ON c.id = m.conversation_id WHERE c.id IS NULL"
        )
        return cursor.fetchone()[0]


def assert_everything_deleted_exactly_once(conversation_ids, job_ids):
    """Each conversation gone with all its messages, and each deletion job succeeded having
    deleted its conversation itself (a second completed run would record `deleted: false`)."""
    assert not Conversation.objects.filter(pk__in=conversation_ids).exists()
    assert not Message.objects.filter(conversation_id__in=conversation_ids).exists()
    assert orphan_message_count() == 0
    jobs = Job.objects.filter(pk__in=job_ids)
    assert jobs.count() == len(job_ids)
    assert sorted(set(jobs.values_list("status", flat=True))) == ["succeeded"]
    assert all(result["deleted"] for result in jobs.values_list("result", flat=True))
