from django import forms
from django.contrib import admin, messages
from django.contrib.admin.exceptions import DisallowedModelAdminLookup
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.text import Truncator
from django_q import admin as q_admin  # noqa: F401 (registers django-q2's pages before we prune)
from django_q import models as q_models

from queues.conf import conf
from queues.core import pausing
from queues.core.services import delete_finished_jobs, retry_jobs
from queues.execution.cancellation import cancel_jobs
from queues.models import Job, JobEvent, QueueEvent, QueuePause

# Our job records are the source of truth for outcomes. django-q2 stores no successes here and
# only runner-level failures, so its "Successful/Failed tasks" pages would contradict the Jobs
# page: hide them, and keep its queued broker rows and schedules.
for model in (q_models.Success, q_models.Failure):
    if admin.site.is_registered(model):
        admin.site.unregister(model)


def to_the_second(moment):
    """A job's time in the lists: the date, then the time to the second (backoffs are seconds)."""
    if moment is None:
        return None  # the admin's empty value
    return format_html(
        '<span class="date">{}</span> {}', f"{moment:%Y-%m-%d}", f"{moment:%H:%M:%S}"
    )


class ShownFiltersOnly:
    """An admin list that takes only the lookups of the filters it shows.

    Django's admin otherwise accepts any lookup on the model's own fields in the query string
    (`?data__title__startswith=PIN%204`, `?traceback__contains=...`), which would tell a hidden
    value apart one guess at a time. Any other lookup is refused with a 400 page saying so.
    Ordering (`?o=`) is by the shown columns only, and the search (`?q=`) covers `search_fields`
    only, as Django does anyway.
    """

    def changelist_view(self, request, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except DisallowedModelAdminLookup as refused:
            context = {
                **self.admin_site.each_context(request),
                "lookup": str(refused).removeprefix("Filtering by ").removesuffix(" not allowed"),
                "list_url": request.path,
            }
            return TemplateResponse(request, "admin/refused_lookup.html", context, status=400)

    def lookup_allowed(self, lookup, value, request=None):
        list_filter = self.get_list_filter(request) if request is not None else self.list_filter
        shown = set()
        for item in list_filter:
            field = item[0] if isinstance(item, (list, tuple)) else item
            if isinstance(field, str):  # a field's filter: its value, or empty or not
                shown |= {field, f"{field}__exact", f"{field}__isnull"}
            else:  # a SimpleListFilter names its own parameter
                shown.add(field.parameter_name)
        return lookup in shown


class JobEventInline(admin.TabularInline):
    """The job's history: who cancelled, asked to stop or retried it, and when."""

    model = JobEvent
    fields = ["action", "by", "at", "detail"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "History"

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("queues.view_job")  # whoever may see the job

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(ShownFiltersOnly, admin.ModelAdmin):
    # Narrow enough for a 1400 px screen beside the filters: a short id (the full one in its
    # tooltip and on the job's page), times to the second, the error cut short.
    list_display = [
        "short_id",
        "job_type",
        "queue",
        "status",
        "attempts_of",
        "subject",
        "user",
        "created",
        "finished",
        "error",
    ]
    list_filter = ["queue", "job_type", "status"]
    # A subject's id alone (42 for "conversation:42") finds it too: the search is a substring
    # match, whatever kinds of subject the job types name.
    search_fields = ["subject", "request_id", "user__username"]
    search_help_text = "A subject (e.g. conversation:42) or its id, a request id or a username."
    list_select_related = ["user"]
    actions = ["retry_selected", "cancel_selected"]
    inlines = [JobEventInline]
    readonly_fields = [field.name for field in Job._meta.fields] + ["traceback_text"]
    fieldsets = [
        (None, {"fields": ["id", "queue", "job_type", "status", "subject", "user", "request_id"]}),
        # The trace id of the request that enqueued the job and of its last failed attempt.
        ("Trace", {"fields": ["trace_context"], "classes": ["collapse"]}),
        ("Data and result", {"fields": ["data", "result"]}),
        ("Attempts", {"fields": ["attempts", "max_attempts", "priority", "run_after", "worker"]}),
        # The enqueue's own options (empty: the type's) and what the handler last reported.
        ("Options", {"fields": ["timeout", "backoff_seconds"]}),
        ("Progress", {"fields": ["progress", "progress_message"]}),
        ("Error", {"fields": ["last_error_class", "last_error", "traceback_text"]}),
        ("Times", {"fields": ["created_at", "started_at", "finished_at"]}),
        ("Operator retry", {"fields": ["retried_by", "retried_at"]}),
        ("Cancellation", {"fields": ["cancel_requested_by", "cancel_requested_at"]}),
    ]

    @admin.display(description="Traceback")
    def traceback_text(self, job):
        """Monospace, its indentation kept (the default read-only rendering collapses it)."""
        if not job.traceback:
            return "-"
        return format_html(
            '<pre style="white-space: pre-wrap; margin: 0; font-size: 12px">{}</pre>',
            job.traceback,
        )

    def get_object(self, request, object_id, from_field=None):
        # The page is read-only (no change permission), so the redacted copy is never saved.
        job = super().get_object(request, object_id, from_field)
        return job.redact_for(request.user) if job is not None else None

    def get_list_display(self, request):
        # One queue (the default) needs no column of its own.
        shown = super().get_list_display(request)
        return shown if len(conf.QUEUES) > 1 else [name for name in shown if name != "queue"]

    def changelist_view(self, request, extra_context=None):
        # The wide job list gets the width of the app menu (the breadcrumbs lead back).
        return super().changelist_view(
            request, {"is_nav_sidebar_enabled": False, **(extra_context or {})}
        )

    @admin.display(description="Job", ordering="id")
    def short_id(self, job):
        return format_html('<span title="{}">{}…</span>', job.pk, str(job.pk)[:8])

    @admin.display(description="Attempts", ordering="attempts")
    def attempts_of(self, job):
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description="Created (UTC)", ordering="created_at")
    def created(self, job):
        return to_the_second(job.created_at)

    @admin.display(description="Finished (UTC)", ordering="finished_at")
    def finished(self, job):
        return to_the_second(job.finished_at)

    @admin.display(description="Error")
    def error(self, job):
        # A job that succeeded after a retry keeps its last error on its page, not in the list.
        if not job.last_error_class or job.status == Job.Status.SUCCEEDED:
            return ""
        text = f"{job.last_error_class}: {job.last_error}"
        return format_html('<span title="{}">{}</span>', text[:1000], Truncator(text).chars(70))

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

    @admin.action(
        description="Cancel selected jobs (ask running ones to stop)", permissions=["retry"]
    )
    def cancel_selected(self, request, queryset):
        selected = queryset.count()
        cancelled, stopping = cancel_jobs(queryset, by=request.user)
        self.message_user(request, f"{cancelled} waiting job(s) cancelled.", messages.SUCCESS)
        if stopping:
            self.message_user(
                request,
                f"{stopping} running job(s) asked to stop: each stops at its next check or "
                "finishes normally.",
                messages.SUCCESS,
            )
        if skipped := selected - cancelled - stopping:
            self.message_user(
                request,
                f"{skipped} job(s) had finished or were already asked to stop; left alone.",
                messages.WARNING,
            )

    def has_retry_permission(self, request):
        """Retry and cancel: `queues.change_job`, never staff status alone."""
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


class PauseForm(forms.ModelForm):
    queue = forms.ChoiceField(choices=[])

    class Meta:
        model = QueuePause
        fields = ["queue"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["queue"].choices = [(queue, queue) for queue in conf.QUEUES]


@admin.register(QueuePause)
class QueuePauseAdmin(ShownFiltersOnly, admin.ModelAdmin):
    """Add one to pause a queue; delete it (or "Resume selected queues") to resume. Both go
    through `queues.core.pausing`, which records who and when (`QueueEvent`)."""

    form = PauseForm
    list_display = ["queue", "paused_by", "paused_at"]
    actions = ["resume_selected"]

    def get_readonly_fields(self, request, obj=None):
        return ["queue", "paused_by", "paused_at"] if obj else []

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # resuming is an action of its own
        return actions

    def save_model(self, request, obj, form, change):
        pausing.pause(obj.queue, by=request.user)

    def delete_model(self, request, obj):
        pausing.resume(obj.queue, by=request.user)

    @admin.action(description="Resume selected queues", permissions=["pause"])
    def resume_selected(self, request, queryset):
        resumed = [queue for queue in queryset.values_list("queue", flat=True)]
        for queue in resumed:
            pausing.resume(queue, by=request.user)
        self.message_user(request, f"Resumed: {', '.join(resumed)}.", messages.SUCCESS)

    def has_pause_permission(self, request, obj=None):
        return request.user.has_perm("queues.pause_queue")

    has_add_permission = has_delete_permission = has_pause_permission

    def has_view_permission(self, request, obj=None):
        return self.has_pause_permission(request) or super().has_view_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(QueueEvent)
class QueueEventAdmin(ShownFiltersOnly, admin.ModelAdmin):
    """Every pause and resume: which queue, by whom, when."""

    list_display = ["queue", "action", "by", "detail", "at"]
    list_filter = ["queue", "action"]
    readonly_fields = list_display

    def has_view_permission(self, request, obj=None):
        pauser = request.user.has_perm("queues.pause_queue")
        return pauser or super().has_view_permission(request, obj)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
