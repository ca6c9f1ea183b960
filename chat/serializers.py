"""The API's shapes and input rules. Job data schemas reuse these rules (see `chat.jobs`)."""

import re

from rest_framework import serializers

from chat.models import Conversation, Message

# C0/C1 control characters (tab, newline and carriage return allowed in message content only),
# and lone surrogates, which PostgreSQL cannot store.
_TITLE_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTENT_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _reject(pattern, what):
    def validate(value):
        if pattern.search(value):
            raise serializers.ValidationError(f"{what} must not contain control characters.")

    return validate


class ConversationSerializer(serializers.ModelSerializer):
    message_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Conversation
        fields = ["id", "title", "created_at", "updated_at", "message_count"]
        read_only_fields = ["id", "created_at", "updated_at"]
        extra_kwargs = {"title": {"validators": [_reject(_TITLE_FORBIDDEN, "Title")]}}


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = ["id", "role", "content", "created_at"]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {
            "content": {
                "trim_whitespace": False,
                "validators": [_reject(_CONTENT_FORBIDDEN, "Content")],
            }
        }
