"""Reads on conversations."""

from django.db.models import Count

from chat.models import Conversation


def conversations_of(user):
    """The user's conversations that the API may show, with their message counts."""
    return (
        Conversation.objects.visible()
        .filter(owner=user)
        .annotate(message_count=Count("messages"))
        .order_by("-created_at", "-id")  # Meta.ordering is dropped by the GROUP BY
    )


def conversation_of(user, conversation_id):
    """The user's visible conversation `conversation_id`, or None."""
    return Conversation.objects.visible().filter(owner=user, pk=conversation_id).first()
