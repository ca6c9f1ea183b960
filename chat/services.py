"""Every change to conversations and messages happens here, once."""

import logging

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import BooleanField, Count, Exists, ExpressionWrapper, F, Q
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
    """Delete the owner's conversation and, by `on_delete=CASCADE`, what refers to it. Idempotent.

    Django's collector does the deleting, so a model that comes to refer to a conversation goes
    with it, and its `post_delete` runs `erase_traces` (`chat.apps`) in this transaction, if
    there is anything to erase. Messages have no receivers and nothing cascades from them: one
    DELETE, never loaded. A conversation already gone is a success (jobs are delivered at least
    once); someone else's is refused.
    """
    # No savepoint: any database error aborts the caller's transaction anyway, and the wrong-owner
    # refusal is raised once the block has ended, having written nothing.
    with transaction.atomic(savepoint=False):
        doomed = Conversation.objects.filter(pk=conversation_id, owner_id=user_id)
        _, counts = doomed.annotate(has_traces=_has_traces(conversation_id)).delete()
        deleted = bool(counts.get(Conversation._meta.label))
        refused = not deleted and Conversation.objects.filter(pk=conversation_id).exists()
        if not deleted and not refused:
            # Gone already (an earlier delivery, another path), so no `post_delete` this time:
            # erase anyway, for job records written about it since.
            erase_traces(conversation_id)
    if refused:
        raise PermanentJobError(f"conversation {conversation_id} does not belong to user {user_id}")
    if not deleted:
        logger.info("conversation %s already deleted", conversation_id)
        return {"deleted": False, "conversation_id": conversation_id}
    messages = counts.get(Message._meta.label, 0)
    # DEBUG: the runner's "job succeeded" line is the outcome's one INFO line.
    logger.debug("conversation %s deleted with %d messages", conversation_id, messages)
    return {"deleted": True, "conversation_id": conversation_id, "messages": messages}


def _has_traces(conversation_id: int) -> ExpressionWrapper:
    """Whether job records or the admin log keep anything of the conversation for `erase_traces`
    to erase. Asked in the collector's SELECT, the receiver reads it (`chat.apps`): a deletion
    with nothing to erase sends no erasure queries."""
    jobs = Job.objects.filter(
        subject=Conversation.subject_for(conversation_id), job_type__in=types_with_content()
    )
    log = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(Conversation), object_id=str(conversation_id)
    )
    return ExpressionWrapper(Q(Exists(jobs)) | Q(Exists(log)), output_field=BooleanField())


def erase_traces(conversation_id: int) -> None:
    """Remove what other tables keep of a deleted conversation's title and content.

    Waiting jobs that would add content to it are cancelled and job records about it lose their
    content fields; the admin log's `object_repr` is reset (`Conversation.__str__` holds no title
    today, but older entries or a changed `__str__` might). Runs in the deleting transaction, once
    for every deletion of a conversation, whichever path (`post_delete`, see `chat.apps`); the
    deletion job skips it when its SELECT found nothing to erase (`_has_traces`).
    """
    forget_subject(Conversation.subject_for(conversation_id))
    LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(Conversation), object_id=str(conversation_id)
    ).update(object_repr=f"Conversation {conversation_id}")
