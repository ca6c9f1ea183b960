"""Every change to conversations and messages happens here, once."""

import functools
import logging

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.models import Count, F
from django.db.models.deletion import Collector, get_candidate_relations_to_delete
from django.db.models.signals import post_delete, pre_delete
from django.utils import timezone

from chat.apps import _conversation_deleted
from chat.models import Conversation, Message
from queues.api import (
    Job,
    PermanentJobError,
    SubjectGone,
    cancel_waiting_jobs,
    enqueue,
    enqueue_if,
    forget_subject,
    keeps_content_about,
    keeps_content_about_sql,
    prepared_cursor,
)

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


def delete_conversation(*, conversation_id: int, user_id: int) -> dict:
    """Delete the owner's conversation and, by `on_delete=CASCADE`, what refers to it, in one
    transaction; erase what other tables keep of it. Idempotent: a conversation already gone is a
    success (jobs are delivered at least once); someone else's is refused, having written nothing.

    When Django's collector would delete every referring row in one DELETE per table without
    loading it (`_cascade`), those DELETEs are sent as it would send them, and the erasure runs
    only if there is anything to erase: the job's common path, a few statements and no ORM
    compilation. Otherwise (a receiver, another `on_delete`, a nested cascade) the collector
    deletes, and `post_delete` erases (`chat.apps`).
    """
    # No savepoint: any database error aborts the caller's transaction anyway, and the wrong-owner
    # refusal is raised once the block has ended, having written nothing.
    with transaction.atomic(savepoint=False):
        cascade = _cascade()
        if cascade is not None:
            deleted, messages = _delete_fast(conversation_id, user_id, cascade)
        else:
            doomed = Conversation.objects.filter(pk=conversation_id, owner_id=user_id)
            _, counts = doomed.delete()
            deleted = bool(counts.get(Conversation._meta.label))
            messages = counts.get(Message._meta.label, 0)
        refused = not deleted and Conversation.objects.filter(pk=conversation_id).exists()
        if not deleted and not refused:
            # Gone already (an earlier delivery, another path): erase anyway, for job records
            # written about it since.
            erase_traces(conversation_id)
    if refused:
        raise PermanentJobError(f"conversation {conversation_id} does not belong to user {user_id}")
    if not deleted:
        logger.info("conversation %s already deleted", conversation_id)
        return {"deleted": False, "conversation_id": conversation_id}
    # DEBUG: the runner's "job succeeded" line is the outcome's one INFO line.
    logger.debug("conversation %s deleted with %d messages", conversation_id, messages)
    return {"deleted": True, "conversation_id": conversation_id, "messages": messages}


def _cascade() -> list[tuple[str, str]] | None:
    """(table, column) of each model referring to a conversation with `on_delete=CASCADE`, when
    Django's collector would delete their rows in one DELETE per table without loading them
    (`Collector.can_fast_delete`) and the only receiver of a conversation's deletion is the
    erasure; None when the collector must do more."""
    if pre_delete.has_listeners(Conversation) or not _only_the_erasure_listens():
        return None
    meta, collector = Conversation._meta, Collector(using=DEFAULT_DB_ALIAS)
    if meta.many_to_many or any(hasattr(f, "bulk_related_objects") for f in meta.private_fields):
        return None
    cascade = []
    for relation in get_candidate_relations_to_delete(meta):
        if not collector.can_fast_delete(relation.related_model, from_field=relation.field):
            return None
        cascade.append((relation.related_model._meta.db_table, relation.field.column))
    return cascade


def _only_the_erasure_listens() -> bool:
    receivers, async_receivers = post_delete._live_receivers(Conversation)
    return not async_receivers and all(r is _conversation_deleted for r in receivers)


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


@functools.cache
def _conversation_deletion_sql() -> str:
    """The conversation's DELETE, RETURNING whether the admin log names it, its EXISTS left open
    for the caller to close (and name, as `_deletion_sql` does)."""
    return (
        f"DELETE FROM {_quote(Conversation._meta.db_table)} WHERE id = %s AND owner_id = %s"
        f" RETURNING EXISTS (SELECT 1 FROM {_quote(LogEntry._meta.db_table)} WHERE object_id = %s"
        f" AND content_type_id = (SELECT id FROM {_quote(ContentType._meta.db_table)}"
        " WHERE app_label = %s AND model = %s)"
    )


@functools.cache
def _deletion_sql(cascade: tuple[tuple[str, str], ...], kept: str) -> str:
    """PostgreSQL: the conversation's DELETE with one DELETE per referring table in `cascade` as
    data-modifying CTEs; (whether anything is left to erase: the admin log names it or the
    condition `kept` holds, messages deleted). Built once per cascade."""
    conversation = _conversation_deletion_sql()
    gone = [
        f"gone{i} AS (DELETE FROM {_quote(table)} WHERE {_quote(column)} = %s"
        " AND EXISTS (SELECT 1 FROM conversation)"
        f"{' RETURNING 1' if table == Message._meta.db_table else ''})"
        for i, (table, column) in enumerate(cascade)
    ]
    counted = [i for i, (table, _) in enumerate(cascade) if table == Message._meta.db_table]
    count = f"(SELECT count(*) FROM gone{counted[0]})" if counted else "0"
    return (
        f"WITH conversation AS ({conversation}) AS logged){''.join(f', {g}' for g in gone)}"
        f" SELECT logged OR {kept}, {count} FROM conversation"
    )


def _delete_fast(conversation_id: int, user_id: int, cascade: list[tuple[str, str]]):
    """(whether the owner's conversation was deleted, how many messages went with it): the
    conversation's DELETE, which tells whether the admin log names it, and one DELETE per
    referring table (foreign keys are checked at commit); on PostgreSQL all in one statement, the
    others riding as data-modifying CTEs. Then the erasure, if anything is left to erase."""
    meta = Conversation._meta
    params = [conversation_id, user_id, str(conversation_id), meta.app_label, meta.model_name]
    messages = 0
    # Its text is the same for every conversation: prepared once per connection on PostgreSQL.
    with prepared_cursor() as cursor:
        if connection.vendor == "postgresql":
            # Whether a job record keeps content about it is asked in the same statement.
            kept, kept_params = keeps_content_about_sql(Conversation.subject_for(conversation_id))
            cursor.execute(
                _deletion_sql(tuple(cascade), kept),
                [*params, *[conversation_id] * len(cascade), *kept_params],
            )
            row = cursor.fetchone()
            if row is None:
                return False, 0
            erase, messages = row
        else:  # SQLite: no data-modifying CTEs
            cursor.execute(f"{_conversation_deletion_sql()})", params)
            row = cursor.fetchone()
            if row is None:
                return False, 0
            erase = row[0]
            for table, column in cascade:
                cursor.execute(
                    f"DELETE FROM {_quote(table)} WHERE {_quote(column)} = %s", [conversation_id]
                )
                if table == Message._meta.db_table:
                    messages = cursor.rowcount
            erase = erase or keeps_content_about(Conversation.subject_for(conversation_id))
    if erase:
        erase_traces(conversation_id)
    return True, messages


def erase_traces(conversation_id: int) -> None:
    """Remove what other tables keep of a deleted conversation's title and content.

    Waiting jobs that would add content to it are cancelled and job records about it lose their
    content fields; the admin log's `object_repr` is reset (`Conversation.__str__` holds no title
    today, but older entries or a changed `__str__` might). Runs in the deleting transaction, once
    for every deletion of a conversation, whichever path (`post_delete`, see `chat.apps`); the
    deletion job skips it when nothing is left to erase (`_delete_fast`).
    """
    forget_subject(Conversation.subject_for(conversation_id))
    LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(Conversation), object_id=str(conversation_id)
    ).update(object_repr=f"Conversation {conversation_id}")
