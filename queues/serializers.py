from rest_framework import serializers

from queues.models import Job


class JobSerializer(serializers.ModelSerializer):
    """A job record as its owner sees it: everything but the traceback."""

    type = serializers.CharField(source="job_type")
    user_id = serializers.IntegerField(allow_null=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "queue",
            "type",
            "data",
            "user_id",
            "request_id",
            "status",
            "attempts",
            "max_attempts",
            "run_after",
            "last_error",
            "last_error_class",
            "result",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class EnqueueSerializer(serializers.Serializer):
    queue = serializers.CharField(max_length=64)
    type = serializers.CharField(max_length=64)
    data = serializers.DictField()
