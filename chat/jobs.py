"""The chat app's job types, declared through the queues app's front door (`queues.api`).

Their data schemas reuse the REST serializers' rules for titles, roles and content.
"""

from datetime import timedelta

from rest_framework import serializers

from chat import services, sweeper
from chat.models import Conversation
from chat.serializers import ConversationSerializer, MessageSerializer
from queues.api import JobData, Unique, UserlessJobData, job_type, raise_if_stop_requested

_ID = {"min_value": 1, "max_value": 2**63 - 1}
# Every chat job type runs on the app's own queue; enqueueing names the type only.
QUEUE = "database"
# A deletion of more messages than this checks for a stop request once done (`delete_conversation`).
CHECK_STOP_AFTER_MESSAGES = 1000


def conversation_subject(data, result=None):
    conversation_id = data.get("conversation_id") or (result or {}).get("conversation_id")
    return Conversation.subject_for(conversation_id) if conversation_id else ""


class DeleteConversationData(JobData):
    conversation_id = serializers.IntegerField(**_ID)


class CreateConversationData(JobData, ConversationSerializer):
    class Meta(ConversationSerializer.Meta):
        fields = ["user_id", "title", "request_id"]


class SaveMessageData(JobData, MessageSerializer):
    conversation_id = serializers.IntegerField(**_ID)

    class Meta(MessageSerializer.Meta):
        fields = ["conversation_id", "user_id", "role", "content", "request_id"]


@job_type(
    "delete_conversation",
    queue=QUEUE,
    schema=DeleteConversationData,
    subject=conversation_subject,
    # One live deletion per conversation: the sweeper or an operator asking again while one waits
    # or runs gets that one back.
    unique=Unique(fields=["conversation_id"]),
    # The default retry policy: a failure (an outage, a bug) is retried twice, then the job fails
    # where the sweeper marks it and operators see it; someone else's conversation
    # (`PermanentJobError`) fails at once.
)
def delete_conversation(data):
    result = services.delete_conversation(
        conversation_id=data["conversation_id"], user_id=data["user_id"]
    )
    # A stop asked while a large deletion ran rolls it back whole; the job is recorded cancelled
    # and the sweeper queues the deletion again later, since it was requested. A small one takes a
    # few milliseconds: a check (a query) would cost more than it could save, so it finishes like
    # a handler that never checks.
    if result.get("messages", 0) > CHECK_STOP_AFTER_MESSAGES:
        raise_if_stop_requested()
    return result


@job_type(
    "create_conversation",
    queue=QUEUE,
    schema=CreateConversationData,
    subject=conversation_subject,
    content_fields=["title"],
    client_enqueueable=True,
)
def create_conversation(data):
    conversation = services.create_conversation(owner_id=data["user_id"], title=data["title"])
    return {"conversation_id": conversation.pk}


@job_type(
    "save_message",
    queue=QUEUE,
    schema=SaveMessageData,
    subject=conversation_subject,
    content_fields=["content"],
    client_enqueueable=True,
)
def save_message(data):
    message = services.add_message(
        conversation_id=data["conversation_id"],
        user_id=data["user_id"],
        role=data["role"],
        content=data["content"],
    )
    return {"conversation_id": data["conversation_id"], "message_id": message.pk}


@job_type("sweep_deletions", queue=QUEUE, schema=UserlessJobData, every=timedelta(minutes=1))
def sweep_deletions(data):
    """The safety net of deletions (`chat.sweeper`), once a minute."""
    return {"requeued": sweeper.sweep_deletions()}
