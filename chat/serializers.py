"""The API's shapes and input rules. Job data schemas reuse these rules (see `chat.jobs`)."""

import re

from django.db import models
from rest_framework import serializers

from chat.models import Conversation, Message
from queues.web.fields import StrictCharField, StrictChoiceField

# Unicode's Bidi_Control characters (embeddings, overrides, isolates and marks): they reorder
# how the text around them is displayed, so a title could show one thing and hold another.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
# C0/C1 control characters (tab, newline and carriage return allowed in message content only),
# bidi controls, and lone surrogates, which PostgreSQL cannot store.
_TITLE_FORBIDDEN = re.compile(rf"[\x00-\x1f\x7f-\x9f{_BIDI}\ud800-\udfff]")
_CONTENT_FORBIDDEN = re.compile(rf"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f{_BIDI}\ud800-\udfff]")


def _reject(pattern, what):
    def validate(value):
        if pattern.search(value):
            raise serializers.ValidationError(
                f"{what} must not contain control or bidi control characters."
            )

    return validate


class StrictModelSerializer(serializers.ModelSerializer):
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
    }
    serializer_choice_field = StrictChoiceField


class ConversationSerializer(StrictModelSerializer):
    class Meta:
        model = Conversation
        fields = ["id", "title", "created_at", "updated_at", "message_count"]
        read_only_fields = ["id", "created_at", "updated_at", "message_count"]
        extra_kwargs = {"title": {"validators": [_reject(_TITLE_FORBIDDEN, "Title")]}}


class MessageSerializer(StrictModelSerializer):
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
