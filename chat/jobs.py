"""The chat app's job types on the `database` queue.

Their data schemas reuse the REST serializers' rules for titles, roles and content.
"""

from rest_framework import serializers

from chat import services
from chat.models import Conversation
from chat.serializers import ConversationSerializer, MessageSerializer
from queues.registry import Unique, register
from queues.schemas import JobData

_ID = {"min_value": 1, "max_value": 2**63 - 1}


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


@register(
    "delete_conversation",
    queue="database",
    schema=DeleteConversationData,
    subject=conversation_subject,
    # One live deletion per conversation: the sweeper or an operator asking again while one waits
    # or runs gets that one back.
    unique=Unique(fields=["conversation_id"]),
)
def delete_conversation(data):
    return services.delete_conversation(
        conversation_id=data["conversation_id"], user_id=data["user_id"]
    )


@register(
    "create_conversation",
    queue="database",
    schema=CreateConversationData,
    subject=conversation_subject,
    content_fields=["title"],
    client_enqueueable=True,
)
def create_conversation(data):
    conversation = services.create_conversation(owner_id=data["user_id"], title=data["title"])
    return {"conversation_id": conversation.pk}


@register(
    "save_message",
    queue="database",
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
