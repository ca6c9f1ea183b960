from django.apps import AppConfig
from django.db.models.signals import post_delete


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self):
        # Erasure is tied to the data, not to a route: the deletion job, the admin, the shell and
        # the CASCADE from a deleted user all delete through Django's collector, which sends
        # post_delete in the deleting transaction. Message has no receivers, so its rows are
        # still deleted in one statement, never loaded.
        from chat.models import Conversation

        post_delete.connect(
            _conversation_deleted, sender=Conversation, dispatch_uid="chat.erase_conversation"
        )


def _conversation_deleted(sender, instance, **kwargs):
    from chat.services import erase_traces

    # The deletion job asked in its SELECT whether there is anything to erase; others did not.
    if getattr(instance, "has_traces", True):
        erase_traces(instance.pk)
