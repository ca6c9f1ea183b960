from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from chat import services
from chat.models import Conversation, Message
from slimy.request_id import new_request_id


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "title",
        "owner",
        "message_count",
        "created_at",
        "updated_at",
        "deletion_requested_at",
        "deletion_failed_at",
    ]
    list_filter = [
        ("deletion_requested_at", admin.EmptyFieldListFilter),
        ("deletion_failed_at", admin.EmptyFieldListFilter),
    ]
    actions = ["retry_deletion"]
    search_fields = ["title", "owner__username", "owner__email"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]
    # No message inline: a conversation may hold millions. The page links to the paginated,
    # filtered message list instead, so it stays the same size and its form a few fields.
    readonly_fields = ["created_at", "updated_at", "messages"]

    @admin.display(description="Messages")
    def messages(self, conversation):
        url = reverse("admin:chat_message_changelist")
        return format_html(
            '<a href="{}?conversation__id__exact={}">{} message(s)</a>',
            url,
            conversation.pk,
            f"{conversation.message_count:,}",
        )

    @admin.action(
        description="Retry the failed deletion of the selected conversations",
        permissions=["delete"],
    )
    def retry_deletion(self, request, queryset):
        retried = services.retry_failed_deletions(queryset, request_id=f"admin-{new_request_id()}")
        self.message_user(request, f"{retried} deletion(s) queued again.")


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["=conversation__id"]
    # Messages are added through the API (which keeps the conversation's count) and never move.
    readonly_fields = ["conversation", "created_at"]
    list_per_page = 50
    # The list is filtered by conversation; counting every message for "N total" is not needed.
    show_full_result_count = False

    def delete_model(self, request, obj):
        services.delete_messages(Message.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        services.delete_messages(queryset)

    def has_add_permission(self, request):
        return False
