import uuid

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, permissions, status
from rest_framework.response import Response

from queues import selectors, services
from queues.errors import JobValidationError
from queues.serializers import EnqueueSerializer, JobSerializer, StatsSerializer
from slimy.openapi import AUTHENTICATED, WITH_BODY, errors


class JobNotFound(exceptions.NotFound):
    """One answer for a missing job and someone else's."""

    default_detail = "Job not found."
    default_code = "job_not_found"


@extend_schema(
    parameters=[OpenApiParameter("job_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
    responses={200: JobSerializer, **errors(*AUTHENTICATED, 404)},
)
class JobDetailView(generics.RetrieveAPIView):
    """`GET /api/queues/jobs/{id}`: the job's record, for whoever enqueued it and for staff."""

    serializer_class = JobSerializer

    def get_object(self):
        try:
            job_id = uuid.UUID(self.kwargs["job_id"])
        except ValueError:
            raise JobNotFound() from None
        job = selectors.jobs_visible_to(self.request.user).filter(pk=job_id).first()
        if job is None:
            raise JobNotFound()
        return job


class JobCreateView(generics.GenericAPIView):
    """`POST /api/queues/jobs`: enqueue a job as the caller (`data.user_id` is the caller)."""

    serializer_class = EnqueueSerializer

    @extend_schema(responses={202: JobSerializer, **errors(*AUTHENTICATED, *WITH_BODY)})
    def post(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data["data"])
        if data.setdefault("user_id", request.user.pk) != request.user.pk:
            raise exceptions.ValidationError({"data": {"user_id": ["Must be your own user id."]}})
        try:
            job = services.enqueue(
                serializer.validated_data["queue"],
                serializer.validated_data["type"],
                data,
                request_id=request.request_id,
            )
        except JobValidationError as exc:
            raise exceptions.ValidationError({"data": exc.fields or [str(exc)]}) from None
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(responses={200: StatsSerializer, **errors(*AUTHENTICATED)})
class QueueStatsView(generics.GenericAPIView):
    """`GET /api/queues/stats`: per queue counts, rates, run times, throughput (staff only)."""

    permission_classes = [permissions.IsAdminUser]
    serializer_class = StatsSerializer

    def get(self, request):
        return Response(
            self.get_serializer({"queues": selectors.queue_stats(settings.QUEUES)}).data
        )
