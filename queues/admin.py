from django.contrib import admin, messages
from django.db.models import Q
from django_q import admin as q_admin  # noqa: F401 (registers django-q2's pages before we prune)
from django_q import models as q_models

from queues.models import Job
from queues.services import delete_finished_jobs, retry_jobs

# Our job records are the source of truth for outcomes. django-q2 stores no successes here and
# only runner-level failures, so its "Successful/Failed tasks" pages would contradict the Jobs
# page: hide them, and keep its queued broker rows and schedules.
for model in (q_models.Success, q_models.Failure):
    if admin.site.is_registered(model):
        admin.site.unregister(model)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "job_type",
        "queue",
        "status",
        "attempts",
        "max_attempts",
        "subject",
        "user",
        "request_id",
        "created_at",
        "finished_at",
    ]
    list_filter = ["queue", "job_type", "status"]
    search_fields = ["subject", "request_id", "user__username"]
    search_help_text = "A conversation id, a request id or a username."
    list_select_related = ["user"]
    actions = ["retry_selected"]
    readonly_fields = [field.name for field in Job._meta.fields]
    fieldsets = [
        (None, {"fields": ["id", "queue", "job_type", "status", "subject", "user", "request_id"]}),
        # The trace id of the request that enqueued the job and of its last failed attempt.
        ("Trace", {"fields": ["trace_context"], "classes": ["collapse"]}),
        ("Data and result", {"fields": ["data", "result"]}),
        ("Attempts", {"fields": ["attempts", "max_attempts", "run_after", "worker"]}),
        ("Error", {"fields": ["last_error_class", "last_error", "traceback"]}),
        ("Times", {"fields": ["created_at", "started_at", "finished_at"]}),
        ("Operator retry", {"fields": ["retried_by", "retried_at"]}),
    ]

    def get_search_results(self, request, queryset, search_term):
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term.isdigit():  # a bare number is a conversation id
            results = results | queryset.filter(Q(subject=f"conversation:{term}"))
        return results, may_have_duplicates

    def get_object(self, request, object_id, from_field=None):
        # The page is read-only (no change permission), so the redacted copy is never saved.
        job = super().get_object(request, object_id, from_field)
        if job is not None:
            job.data = job.data_for(request.user)
        return job

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Retry selected jobs", permissions=["retry"])
    def retry_selected(self, request, queryset):
        # Counted first: on a list filtered by status=failed the retried jobs leave the queryset.
        selected = queryset.count()
        count = retry_jobs(queryset, by=request.user)
        skipped = selected - count
        self.message_user(
            request, f"{count} failed job(s) sent back to their queue.", messages.SUCCESS
        )
        if skipped:
            self.message_user(
                request, f"{skipped} job(s) were not failed and were left alone.", messages.WARNING
            )

    def has_retry_permission(self, request):
        return request.user.has_perm("queues.change_job")

    # With queues.delete_job, a finished job's record may be deleted, never a live one (the
    # dashboard's Jobs page deletes many; the admin's bulk delete would count live jobs it skips).
    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and (obj is None or obj.is_finished)

    def delete_model(self, request, obj):
        delete_finished_jobs(Job.objects.filter(pk=obj.pk), by=request.user)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions
