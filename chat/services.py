"""Every change to conversations and messages happens here, once."""

import logging

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Exists
from django.utils import timezone

from chat.models import Conversation, Message
from queues.errors import PermanentJobError
from queues.selectors import jobs_with_content
from queues.services import cancel_waiting_jobs, enqueue, scrub_jobs

logger = logging.getLogger("chat")


class ConversationGone(PermanentJobError):
    """The conversation is missing, not the user's, or its deletion was requested."""


def create_conversation(*, owner_id, title):
    conversation = Conversation.objects.create(owner_id=owner_id, title=title)
    conversation.message_count = 0
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
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    logger.info(
        "message %s added to conversation %s (%d chars)", message.pk, conversation_id, len(content)
    )
    return message


@transaction.atomic
def request_conversation_deletion(conversation, *, request_id):
    """Hide the conversation at once and store the job that deletes it, in one transaction.

    Returns the job, or None when another request got there first (the row is locked and
    re-checked, so concurrent DELETEs make exactly one job).
    """
    marked = Conversation.objects.filter(
        pk=conversation.pk, deletion_requested_at__isnull=True
    ).update(deletion_requested_at=timezone.now())
    if not marked:
        return None
    cancel_waiting_jobs(Conversation.subject_for(conversation.pk), "save_message")
    return enqueue(
        "database",
        "delete_conversation",
        {"conversation_id": conversation.pk, "user_id": conversation.owner_id},
        request_id=request_id,
    )


def delete_conversation(*, conversation_id, user_id):
    """Delete the conversation and, through CASCADE, its messages. Idempotent.

    Only the owner's conversation is deleted; one that is already gone is a success, since jobs
    are delivered at least once.
    """
    # No savepoint (two statements per job): any database error aborts the caller's transaction
    # anyway, and the wrong-owner refusal is raised once the block has ended, having written
    # nothing, so a caller may still catch it and go on.
    with transaction.atomic(savepoint=False):
        conversation = (
            Conversation.objects.select_for_update()
            .annotate(has_traces=traces_exist(conversation_id))
            .filter(pk=conversation_id)
            .order_by()
            .first()
        )
        if conversation is None:
            erase_traces(conversation_id)
            logger.info("conversation %s already deleted", conversation_id)
            return {"deleted": False, "conversation_id": conversation_id}
        if conversation.owner_id == user_id:
            _, counts = conversation.delete()
            if conversation.has_traces:
                erase_traces(conversation_id)
    if conversation.owner_id != user_id:
        raise PermanentJobError(f"conversation {conversation_id} does not belong to user {user_id}")
    messages = counts.get(Message._meta.label, 0)
    logger.info("conversation %s deleted with %d messages", conversation_id, messages)
    return {"deleted": True, "conversation_id": conversation_id, "messages": messages}


def _admin_log_entries(conversation_id):
    return LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(Conversation), object_id=str(conversation_id)
    )


def traces_exist(conversation_id):
    """Whether other tables keep anything `erase_traces` erases: an expression, so the read that
    locks the conversation also tells, and most deletions run no erasure query at all."""
    subject = Conversation.subject_for(conversation_id)
    return Exists(jobs_with_content(subject)) | Exists(_admin_log_entries(conversation_id))


def erase_traces(conversation_id):
    """Remove what other tables keep of a deleted conversation's title and content.

    Job records about it lose their content fields; the admin log's `object_repr` is reset
    (`Conversation.__str__` holds no title today, but older entries or a changed `__str__` might).
    """
    scrub_jobs(Conversation.subject_for(conversation_id))
    _admin_log_entries(conversation_id).update(object_repr=f"Conversation {conversation_id}")
