"""Reads on conversations."""

from chat.models import Conversation


def conversations_of(user):
    """The user's conversations that the API may show, newest first."""
    return Conversation.objects.visible().filter(owner=user)


def conversation_of(user, conversation_id):
    """The user's visible conversation `conversation_id`, or None."""
    return Conversation.objects.visible().filter(owner=user, pk=conversation_id).first()
