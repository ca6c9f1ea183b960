from django.apps import AppConfig
from django.db.models.signals import post_delete


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self):
        # Erasure is tied to the data, not to a route: the admin, the shell and the CASCADE from a
        # deleted user delete through Django's collector, which sends post_delete in the deleting
        # transaction; the deletion job's own path erases as this receiver would
        # (`chat.services.delete_conversation`).
        from chat.models import Conversation

        post_delete.connect(
            _conversation_deleted, sender=Conversation, dispatch_uid="chat.erase_conversation"
        )


def _conversation_deleted(sender, instance, **kwargs):
    from chat.services import erase_traces

    erase_traces(instance.pk)
