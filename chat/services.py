"""Every change to conversations and messages happens here, once."""

import logging

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import connection, transaction
from django.db.models import Count, F
from django.utils import timezone

from chat.models import Conversation, Message
from queues.api import (
    Job,
    PermanentJobError,
    SubjectGone,
    cancel_waiting_jobs,
    enqueue,
    enqueue_if,
    forget_subject,
    types_with_content,
)
from queues.engine.statements import hot_cursor

logger = logging.getLogger("chat")


class ConversationGone(SubjectGone):
    """The conversation is missing, not the user's, or its deletion was requested: the job fails
    alike in all three cases, and keeps no content."""


def create_conversation(*, owner_id, title):
    conversation = Conversation.objects.create(owner_id=owner_id, title=title)
    logger.info("conversation %s created", conversation.pk)
    return conversation


def rename_conversation(conversation, *, title):
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


@transaction.atomic
def add_message(*, conversation_id, user_id, role, content):
    """Append a message, unless the conversation is gone or its deletion was requested.

    The conversation row is locked first, so a deletion cannot slip in between the check and the
    insert and leave the message without its conversation.
    """
    conversation = (
        Conversation.objects.select_for_update()
        .filter(pk=conversation_id, owner_id=user_id, deletion_requested_at__isnull=True)
        .first()
    )
    if conversation is None:
        raise ConversationGone(f"conversation {conversation_id} of user {user_id} is not available")
    message = Message.objects.create(conversation=conversation, role=role, content=content)
    Conversation.objects.filter(pk=conversation.pk).update(
        updated_at=timezone.now(), message_count=F("message_count") + 1
    )
    logger.info(
        "message %s added to conversation %s (%d chars)", message.pk, conversation_id, len(content)
    )
    return message


@transaction.atomic
def delete_messages(messages):
    """Delete `messages` (a queryset) and take them off their conversations' counts."""
    per_conversation = messages.order_by().values("conversation_id").annotate(n=Count("id"))
    for row in per_conversation:
        Conversation.objects.filter(pk=row["conversation_id"]).update(
            message_count=F("message_count") - row["n"]
        )
    return messages.delete()


def request_conversation_deletion(conversation, *, request_id):
    return request_deletion(conversation.pk, owner_id=conversation.owner_id, request_id=request_id)


def request_deletion(conversation_id: int, *, owner_id: int, request_id: str | None) -> Job | None:
    """Hide the owner's conversation at once and store the job that deletes it, atomically: the
    job is stored only if setting the deletion mark changes the conversation (`enqueue_if`), on
    PostgreSQL in the same statement, so marking and enqueueing pay no BEGIN and COMMIT.

    Returns the job, or None when the conversation is missing, someone else's, or another request
    got there first (the UPDATE re-checks the mark under the row lock, so concurrent DELETEs make
    exactly one job). Messages still waiting to be saved are withdrawn next, not run; were that
    cut short (a crash), the deletion withdraws them anyway (`erase_traces`).
    """
    job = enqueue_if(
        Conversation.objects.filter(
            pk=conversation_id, owner_id=owner_id, deletion_requested_at__isnull=True
        ),
        {"deletion_requested_at": timezone.now()},
        "delete_conversation",
        _deletion_data(conversation_id, owner_id),
        request_id=request_id,
        user_checked=True,
    )
    if job is not None:
        cancel_waiting_jobs(Conversation.subject_for(conversation_id), "save_message")
    return job


def enqueue_deletion(conversation_id, *, owner_id, request_id):
    """Store the job that deletes the conversation (the sweeper, an operator's retry).

    `owner_id` is read from the conversation's row, whose foreign key vouches for the user.
    """
    return enqueue(
        "delete_conversation",
        _deletion_data(conversation_id, owner_id),
        request_id=request_id,
        user_checked=True,
    )


def _deletion_data(conversation_id, owner_id):
    return {"conversation_id": conversation_id, "user_id": owner_id}


@transaction.atomic
def retry_failed_deletions(conversations, *, request_id):
    """Queue the deletion of those `conversations` whose deletion failed for good, again.

    Clears their `deletion_failed_at`, so the sweeper watches them again. Returns how many.
    """
    retried = 0
    for conversation in conversations.select_for_update().exclude(deletion_failed_at=None):
        conversation.deletion_failed_at = None
        conversation.save(update_fields=["deletion_failed_at", "updated_at"])
        enqueue_deletion(conversation.pk, owner_id=conversation.owner_id, request_id=request_id)
        retried += 1
    return retried


def delete_conversation(*, conversation_id, user_id):
    """Delete the conversation and its messages. Idempotent.

    Only the owner's conversation is deleted; one that is already gone is a success, since jobs
    are delivered at least once.

    One hand-written statement, the job's whole work on the common path (see docs/benchmarks.md):
    it deletes the conversation, telling whether other tables keep traces of it to erase, and its
    messages, counting them (the foreign key is checked at commit). Django's collector would send
    the same two DELETEs after a SELECT, then `post_delete`, whose one receiver is the erasure
    (`chat.apps`): this path runs `erase_traces` itself, only when the DELETE reports something to
    erase, and tests/chat/test_conversation_deletion.py checks that nothing else refers to or
    listens on these models.
    """
    # No savepoint: any database error aborts the caller's transaction anyway, and the wrong-owner
    # refusal is raised once the block has ended, having written nothing.
    with transaction.atomic(savepoint=False), hot_cursor() as cursor:
        cursor.execute(*_delete_statement(conversation_id, user_id))
        deleted = cursor.fetchone()
        if deleted is not None:
            traces, messages = deleted
            if messages is None:  # not deleted with the conversation: SQLite, or many of them
                messages = _delete_messages(conversation_id)
            if traces:
                erase_traces(conversation_id)
        elif not Conversation.objects.filter(pk=conversation_id).exists():
            erase_traces(conversation_id)
            logger.info("conversation %s already deleted", conversation_id)
            return {"deleted": False, "conversation_id": conversation_id}
    if deleted is None:
        raise PermanentJobError(f"conversation {conversation_id} does not belong to user {user_id}")
    # DEBUG: the runner's "job succeeded" line is the outcome's one INFO line.
    logger.debug("conversation %s deleted with %d messages", conversation_id, messages)
    return {"deleted": True, "conversation_id": conversation_id, "messages": messages}


# Messages a conversation may have (by its `message_count`, only a hint: bulk writes skip it) to
# be deleted in its own statement. Counting the rows a CTE deletes costs about 0.5 µs each (a
# million messages: +0.5 s, twice a plain DELETE); for many, a second statement costs less.
DELETE_IN_ONE_STATEMENT_UP_TO = 1000


def _delete_messages(conversation_id):
    """DELETE the conversation's messages in a statement of their own; returns how many."""
    table = connection.ops.quote_name(Message._meta.db_table)
    with connection.cursor() as cursor:  # a plan for this conversation's size, never a cached one
        cursor.execute(f"DELETE FROM {table} WHERE conversation_id = %s", [conversation_id])
        return cursor.rowcount


def _delete_statement(conversation_id, user_id):
    """DELETE the owner's conversation RETURNING whether job records or the admin log keep traces,
    and how many of its messages it deleted.

    The traces are what `erase_traces` erases: content-carrying job records about it, admin log
    entries naming it. On PostgreSQL the messages of a conversation whose `message_count` says it
    has at most `DELETE_IN_ONE_STATEMENT_UP_TO` go in the same statement (a data-modifying CTE),
    which counts them: never `message_count`, which bulk writes skip. Otherwise (SQLite, or more
    messages) the count is NULL, and the caller deletes them next (`_delete_messages`).
    """
    subject = Conversation.subject_for(conversation_id)
    types = types_with_content()
    conversations, jobs, log, log_types = (
        connection.ops.quote_name(model._meta.db_table)
        for model in (Conversation, Job, LogEntry, ContentType)
    )
    # The content type's id looked up in the statement: cheaper than `get_for_model` in Python.
    sql = (
        f"DELETE FROM {conversations} WHERE id = %s AND owner_id = %s RETURNING "
        f"EXISTS (SELECT 1 FROM {jobs} WHERE subject = %s"
        f" AND job_type IN ({', '.join(['%s'] * len(types)) or 'NULL'}))"
        f" OR EXISTS (SELECT 1 FROM {log} WHERE content_type_id ="
        f" (SELECT id FROM {log_types} WHERE app_label = %s AND model = %s) AND object_id = %s)"
    )
    meta = Conversation._meta
    params = [conversation_id, user_id, subject, *types]
    params += [meta.app_label, meta.model_name, str(conversation_id)]
    if connection.vendor != "postgresql":
        return f"{sql}, NULL", params
    messages = connection.ops.quote_name(Message._meta.db_table)
    sql = (
        f"WITH conversation AS ({sql} AS traces, message_count <= %s AS few), gone AS ("
        f"DELETE FROM {messages} WHERE conversation_id = %s"
        " AND EXISTS (SELECT 1 FROM conversation WHERE few) RETURNING 1)"
        " SELECT traces, CASE WHEN few THEN (SELECT count(*) FROM gone) END FROM conversation"
    )
    return sql, [*params, DELETE_IN_ONE_STATEMENT_UP_TO, conversation_id]


def erase_traces(conversation_id):
    """Remove what other tables keep of a deleted conversation's title and content.

    Waiting jobs that would add content to it are cancelled and job records about it lose their
    content fields; the admin log's `object_repr` is reset (`Conversation.__str__` holds no title
    today, but older entries or a changed `__str__` might). Runs in the deleting transaction for
    every deletion of a conversation, whichever path (see `chat.apps`); the deletion job's
    statement tells first whether there is anything to erase (`_delete_statement`).
    """
    forget_subject(Conversation.subject_for(conversation_id))
    LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(Conversation), object_id=str(conversation_id)
    ).update(object_repr=f"Conversation {conversation_id}")
