from django.conf import settings
from django.db import models
from django_prometheus.models import ExportModelOperationsMixin


class ConversationQuerySet(models.QuerySet):
    def visible(self):
        """Conversations whose deletion has not been requested: the only ones the API shows."""
        return self.filter(deletion_requested_at__isnull=True)


class Conversation(ExportModelOperationsMixin("conversation"), models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Set when the owner asks for deletion; from then on the API treats it as gone, and a job
    # deletes it for real.
    deletion_requested_at = models.DateTimeField(null=True, blank=True)
    # Kept by `chat.services` in the transaction that adds or deletes messages, so listing
    # conversations never counts their messages.
    message_count = models.PositiveIntegerField(default=0, editable=False)
    # Set by the sweeper when the deletion's job failed for good: from then on operators retry it
    # (admin), and the sweeper no longer queues it again every minute.
    deletion_failed_at = models.DateTimeField(null=True, blank=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="conversation_owner_recent_idx"),
            models.Index(
                fields=["deletion_requested_at"],
                name="conversation_deletion_idx",
                condition=models.Q(deletion_requested_at__isnull=False),
            ),
        ]

    def __str__(self):
        # Ids, not titles: this string lands in admin logs and log lines.
        return f"Conversation {self.pk}"

    @staticmethod
    def subject_for(conversation_id):
        """How job records name a conversation (`queues.models.Job.subject`)."""
        return f"conversation:{conversation_id}"


class Message(models.Model):
    """A message of a conversation.

    Deleting a conversation removes its messages with one `DELETE ... WHERE conversation_id IN ...`
    (Django's fast delete). That only holds while nothing listens to Message signals and nothing
    cascades from it: keep it that way.
    """

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        SYSTEM = "system"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(max_length=32_000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at", "id"], name="message_in_order_idx"),
        ]

    def __str__(self):
        return f"Message {self.pk} of conversation {self.conversation_id}"
