from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from queues.core import history
from queues.models import Job, JobEvent
from queues.web.fields import StrictCharField


class JobEventSerializer(serializers.ModelSerializer):
    """One action on the job. `by`: the user's name, shown to holders of `queues.view_job` and to
    the user who acted; null otherwise (an operator) and for the system."""

    by = serializers.SerializerMethodField()

    def get_by(self, event) -> str | None:
        viewer = self.context.get("viewer")
        if event.by is None or viewer is None:
            return None
        if event.by_id == viewer.pk or viewer.has_perm("queues.view_job"):
            return event.by.get_username()
        return None

    class Meta:
        model = JobEvent
        fields = ["action", "by", "at", "detail"]
        read_only_fields = fields


class JobSerializer(serializers.ModelSerializer):
    """A job record: everything but the traceback, content fields for the job's owner only, and
    its history (who cancelled or retried it, when)."""

    type = serializers.CharField(source="job_type")
    user_id = serializers.IntegerField(allow_null=True)
    data = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()
    last_error = serializers.SerializerMethodField()
    progress_message = serializers.SerializerMethodField()
    history = serializers.SerializerMethodField()

    def get_data(self, job) -> dict:
        request = self.context.get("request")
        return job.data_for(request.user if request else None)

    @extend_schema_field(OpenApiTypes.ANY)
    def get_result(self, job):
        request = self.context.get("request")
        return job.output_for(request.user if request else None)[0]

    def get_last_error(self, job) -> str:
        request = self.context.get("request")
        return job.output_for(request.user if request else None)[1]

    def get_progress_message(self, job) -> str:
        request = self.context.get("request")
        return job.progress_message_for(request.user if request else None)

    @extend_schema_field(JobEventSerializer(many=True))
    def get_history(self, job):
        request = self.context.get("request")
        viewer = request.user if request else None
        return JobEventSerializer(
            history.events_of(job), many=True, context={"viewer": viewer}
        ).data

    class Meta:
        model = Job
        fields = [
            "id",
            "queue",
            "type",
            "data",
            "user_id",
            "request_id",
            "priority",
            "status",
            "attempts",
            "max_attempts",
            "run_after",
            "timeout",
            "backoff_seconds",
            "progress",
            "progress_message",
            "last_error",
            "last_error_class",
            "result",
            "created_at",
            "started_at",
            "finished_at",
            "cancel_requested_at",
            "history",
        ]
        read_only_fields = fields


# Items of one `POST /api/queues/jobs/bulk`: one statement's worth (queues.engine.batch).
BULK_MAX_ITEMS = 500
# The longest a client may put off its job's first run: a day (its live-job cap counts it).
CLIENT_MAX_DELAY = 24 * 3600


class EnqueueSerializer(serializers.Serializer):
    queue = StrictCharField(max_length=64)
    type = StrictCharField(max_length=64, help_text="A client-enqueueable job type.")
    data = serializers.DictField()
    priority = serializers.IntegerField(
        min_value=0,
        max_value=9,
        required=False,
        help_text="0 is claimed first; at least the type's own (a client may only let its jobs"
        " wait). The type's by default.",
    )
    delay = serializers.FloatField(
        min_value=0,
        max_value=CLIENT_MAX_DELAY,
        required=False,
        help_text="Seconds before the job's first run (at most a day). The type's by default.",
    )


class BulkEnqueueSerializer(EnqueueSerializer):
    data = None
    items = serializers.ListField(
        child=serializers.DictField(),
        min_length=1,
        max_length=BULK_MAX_ITEMS,
        help_text="The data of each job. At most the smallest of 500, the live-job cap and the"
        " rate's count (100 with the defaults); more is a 400 too_many_items.",
    )


class JobListSerializer(serializers.Serializer):
    jobs = JobSerializer(many=True)


class MinuteStatsSerializer(serializers.Serializer):
    minute = serializers.DateTimeField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Failed attempts in that minute.")


class QueueStatsSerializer(serializers.Serializer):
    waiting = serializers.IntegerField(help_text="Queued or waiting for a retry.")
    running = serializers.IntegerField()
    enqueued = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Jobs failed for good (once per job).")
    cancelled = serializers.IntegerField()
    attempts_failed = serializers.IntegerField()
    retries_scheduled = serializers.IntegerField()
    success_rate = serializers.FloatField(allow_null=True)
    run_seconds_avg = serializers.FloatField(allow_null=True)
    run_seconds_p95 = serializers.FloatField(allow_null=True)
    throughput_per_minute = serializers.DictField(
        child=serializers.FloatField(), help_text='Jobs per minute over the last "1m", "5m", "60m".'
    )
    oldest_waiting_seconds = serializers.FloatField(help_text="0 while the queue is paused.")
    live_clusters = serializers.IntegerField()
    paused = serializers.BooleanField(help_text="Paused: no job of the queue starts.")
    paused_at = serializers.DateTimeField(allow_null=True)
    per_minute = MinuteStatsSerializer(many=True)


class StatsSerializer(serializers.Serializer):
    queues = serializers.DictField(child=QueueStatsSerializer())
