from django.contrib import admin

from chat import services
from chat.models import Conversation, Message
from slimy.request_id import new_request_id


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ["role", "content", "created_at"]
    readonly_fields = ["created_at"]
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "title",
        "owner",
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
    readonly_fields = ["created_at", "updated_at"]
    inlines = [MessageInline]

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
    raw_id_fields = ["conversation"]
