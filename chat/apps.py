from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_delete, pre_delete


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"

    def ready(self):
        # Erasure is tied to the data, not to a route: the API's deletion job, the admin, the
        # shell and the CASCADE from a deleted user all send these signals, in the deleting
        # transaction. (Message has no receivers, so its rows are still deleted in one statement.)
        from chat.models import Conversation

        post_delete.connect(
            _conversation_deleted, sender=Conversation, dispatch_uid="chat.erase_conversation"
        )
        pre_delete.connect(
            _user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="chat.erase_user"
        )


def _conversation_deleted(sender, instance, **kwargs):
    from chat.services import erase_traces

    erase_traces(instance.pk)


def _user_deleted(sender, instance, **kwargs):
    from chat.services import erase_user_traces

    erase_user_traces(instance.pk)
