import uuid

from django.db.models import prefetch_related_objects
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, mixins, permissions, status
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle

from queues.conf import DEFAULT_ENQUEUE_RATE, conf
from queues.core import history, selectors, services
from queues.core.filters import JobFilterForm
from queues.errors import JobValidationError, TooManyLiveJobs
from queues.execution.cancellation import cancel_jobs
from queues.models import Job
from queues.web.openapi import AUTHENTICATED, WITH_BODY, errors
from queues.web.serializers import (
    BulkEnqueueSerializer,
    EnqueueSerializer,
    JobListSerializer,
    JobSerializer,
    StatsSerializer,
)

_JOB_ID = OpenApiParameter("job_id", OpenApiTypes.UUID, OpenApiParameter.PATH)


class JobNotFound(exceptions.NotFound):
    """One answer for a missing job and someone else's."""

    default_detail = "Job not found."
    default_code = "job_not_found"


class JobNotFailed(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "Only a failed job can be retried."
    default_code = "job_not_failed"


class JobFinished(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The job has finished; there is nothing to cancel."
    default_code = "job_finished"


class JobRunning(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The job is running; only an operator can ask it to stop."
    default_code = "job_running"


class TooManyJobs(exceptions.Throttled):
    default_code = "too_many_live_jobs"


class HasJobPermission(permissions.BasePermission):
    """The caller holds `queues.<codename>_job` (directly, through a group, or as superuser)."""

    codename = "view"

    def has_permission(self, request, view):
        return bool(request.user and request.user.has_perm(f"queues.{self.codename}_job"))


class CanChangeJobs(HasJobPermission):
    codename = "change"


class TooManyItems(exceptions.APIException):
    """A request larger than a limit it could never fit in, however long it waited."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "too_many_items"


class EnqueueRateThrottle(UserRateThrottle):
    """`ENQUEUE_RATE` jobs per user, each item of a bulk request counting.

    Checked before the view runs and spent (`spend`) once it has answered: a request refused by
    a limit (this rate, the live-job cap, a size no request may have) spends nothing.
    """

    scope = "enqueue"

    def get_rate(self):
        # The project's REST_FRAMEWORK "enqueue" rate, else the app's default.
        return self.THROTTLE_RATES.get(self.scope, DEFAULT_ENQUEUE_RATE)

    def allow_request(self, request, view):
        self.cost = view.jobs_asked(request)
        return super().allow_request(request, view)

    def throttle_success(self):
        return len(self.history) + self.cost <= self.num_requests or self.throttle_failure()

    def spend(self, cost):
        """Count `cost` jobs against the rate (read again: others may have spent since)."""
        if self.rate is None or getattr(self, "key", None) is None:
            return
        now = self.timer()
        history = [t for t in self.cache.get(self.key, []) if t > now - self.duration]
        self.cache.set(self.key, [now] * cost + history, self.duration)


class EnqueueView(generics.GenericAPIView):
    """An enqueue endpoint. A request asking for more jobs than a per-user limit allows at all
    gets a 400 `too_many_items` saying which; the rate is spent once the view has answered:
    each job of an accepted request, one for invalid input, nothing for a refusal by a limit
    (`too_many_items`, 429)."""

    throttle_classes = [EnqueueRateThrottle]

    def jobs_asked(self, request):
        """How many jobs the request asks for."""
        return 1

    def get_throttles(self):
        if not hasattr(self, "_throttles"):  # the same instances check and then spend
            self._throttles = super().get_throttles()
        return self._throttles

    def check_throttles(self, request):
        limits = [("CLIENT_LIVE_JOBS_PER_USER", conf.CLIENT_LIVE_JOBS_PER_USER, "live jobs")]
        for throttle in self.get_throttles():
            if throttle.rate is not None:
                per = f"jobs per {throttle.duration} s"
                limits.append(("ENQUEUE_RATE", throttle.num_requests, per))
        cost = self.jobs_asked(request)
        for setting, limit, what in limits:
            if cost > limit:
                self.refused_by_limit = True
                raise TooManyItems(
                    f"{cost} items can never be accepted: at most {limit} {what} per user "
                    f"({setting}); send at most {limit} at once."
                )
        self.throttles_checked = True
        super().check_throttles(request)

    def finalize_response(self, request, response, *args, **kwargs):
        refused = getattr(self, "refused_by_limit", False) or response.status_code == 429
        if getattr(self, "throttles_checked", False) and not refused and response.status_code < 500:
            cost = self.jobs_asked(request) if response.status_code < 300 else 1
            for throttle in self.get_throttles():
                throttle.spend(cost)
        return super().finalize_response(request, response, *args, **kwargs)


def _job_from_url(request, raw_id):
    try:
        job_id = uuid.UUID(raw_id)
    except ValueError:
        raise JobNotFound() from None
    job = selectors.jobs_visible_to(request.user).filter(pk=job_id).first()
    if job is None:
        raise JobNotFound()
    return job


@extend_schema(parameters=[_JOB_ID], responses={200: JobSerializer, **errors(*AUTHENTICATED, 404)})
class JobDetailView(generics.RetrieveAPIView):
    """`GET /api/queues/jobs/{id}`: the job's record, for whoever enqueued it and for holders of
    `queues.view_job` (who see content fields redacted)."""

    serializer_class = JobSerializer

    def get_object(self):
        return _job_from_url(self.request, self.kwargs["job_id"])


class JobRetryView(generics.GenericAPIView):
    """`POST /api/queues/jobs/{id}/retry`: send a failed job back to its queue
    (`queues.change_job`)."""

    serializer_class = JobSerializer
    permission_classes = [permissions.IsAuthenticated, CanChangeJobs]

    @extend_schema(
        parameters=[_JOB_ID],
        request=None,
        responses={200: JobSerializer, **errors(*AUTHENTICATED, 404, 409)},
    )
    def post(self, request, job_id):
        job = _job_from_url(request, job_id)
        if not services.retry_jobs(Job.objects.filter(pk=job.pk), by=request.user):
            raise JobNotFailed()
        job.refresh_from_db()
        return Response(self.get_serializer(job).data)


class JobCancelView(generics.GenericAPIView):
    """`POST /api/queues/jobs/{id}/cancel`: cancel a waiting (queued or retrying) job, as its
    owner or with `queues.change_job`. With `queues.change_job`, a running job is asked to stop
    (202): its handler stops at its next check, or it finishes normally."""

    serializer_class = JobSerializer

    @extend_schema(
        parameters=[_JOB_ID],
        request=None,
        responses={
            200: JobSerializer,
            202: JobSerializer,
            **errors(*AUTHENTICATED, 404, 409),
        },
    )
    def post(self, request, job_id):
        job = _job_from_url(request, job_id)
        operator = request.user.has_perm("queues.change_job")
        if not operator and job.user_id != request.user.pk:
            raise exceptions.PermissionDenied()  # sees others' jobs (view_job), may not act
        cancelled, _ = cancel_jobs(
            Job.objects.filter(pk=job.pk), by=request.user, stop_running=operator
        )
        job.refresh_from_db()
        stop_pending = job.status == Job.Status.RUNNING and job.cancel_requested_at is not None
        if not cancelled and not (operator and stop_pending):
            raise JobRunning() if job.status == Job.Status.RUNNING else JobFinished()
        return Response(
            self.get_serializer(job).data,
            status=status.HTTP_200_OK if cancelled else status.HTTP_202_ACCEPTED,
        )


class JobCursorPagination(CursorPagination):
    """Pages of jobs newest first, by a cursor on `job_created_idx` (created_at, id): each page
    one index range however deep, and no page shifts when jobs are added meanwhile. A cursor or
    `page_size` that is not valid is a 400 naming it."""

    ordering = ("-created_at", "-id")
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return api_settings.PAGE_SIZE or 50
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= self.max_page_size):
            raise exceptions.ValidationError(
                {"page_size": [f"Must be a whole number from 1 to {self.max_page_size}."]}
            )
        return int(raw)

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            problem = "Not a cursor of this list: start again without it."
            raise exceptions.ValidationError({"cursor": [problem]}) from None


_LIST_PARAMETERS = [
    OpenApiParameter(
        "status",
        str,
        many=True,
        enum=Job.Status.values,
        description="Any of these statuses (repeat the parameter or separate with commas).",
    ),
    OpenApiParameter("job_type", str, many=True, description="Any of these job types."),
    OpenApiParameter("queue", str, many=True, description="Any of these queues."),
    OpenApiParameter("subject", str, description='What the job is about, e.g. "conversation:42".'),
    OpenApiParameter("request_id", str, description="The request that enqueued the job."),
    OpenApiParameter(
        "user",
        str,
        description="A username or user id (only your own, unless you hold `queues.view_job`).",
    ),
    OpenApiParameter("q", str, description="A job id, subject or request id (exact)."),
    *(
        OpenApiParameter(name, OpenApiTypes.DATETIME, description=f"{what} (ISO 8601, inclusive).")
        for name, what in (
            ("created_after", "Created at or after"),
            ("created_before", "Created at or before"),
            ("finished_after", "Finished at or after"),
            ("finished_before", "Finished at or before"),
        )
    ),
]


class JobListCreateView(mixins.ListModelMixin, EnqueueView):
    """`GET /api/queues/jobs`: the caller's jobs (every job, content fields redacted, for holders
    of `queues.view_job`), newest first, filtered, a cursor page at a time.

    `POST /api/queues/jobs`: enqueue a job of a client-enqueueable type as the caller. 202 with
    the new job; 200 with the existing one when a unique type's job with the same key is already
    there (nothing stored)."""

    pagination_class = JobCursorPagination
    # Besides the filters: the page's and DRF's own.
    OTHER_PARAMETERS = {"cursor", "page_size", "format"}

    def get_serializer_class(self):
        return JobSerializer if self.request.method == "GET" else EnqueueSerializer

    def check_throttles(self, request):
        if request.method != "GET":  # listing enqueues nothing: the enqueue rate is not spent
            super().check_throttles(request)

    def get_queryset(self):
        params = self.request.query_params
        unknown = sorted(set(params) - set(JobFilterForm.base_fields) - self.OTHER_PARAMETERS)
        if unknown:
            raise exceptions.ValidationError({name: ["Unknown parameter."] for name in unknown})
        form = JobFilterForm(params)
        if not form.is_valid():
            raise exceptions.ValidationError(form.problems())
        jobs = selectors.search_jobs(self.request.user, **form.filters())
        return jobs.prefetch_related(history.EVENTS)

    @extend_schema(
        parameters=_LIST_PARAMETERS,
        responses={200: JobSerializer(many=True), **errors(*AUTHENTICATED, 400)},
    )
    def get(self, request):
        return self.list(request)

    @extend_schema(
        request=EnqueueSerializer,
        responses={
            202: JobSerializer,
            200: JobSerializer,
            **errors(*AUTHENTICATED, *WITH_BODY, 429),
        },
    )
    def post(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            job = services.enqueue_for_client(
                request.user,
                serializer.validated_data["queue"],
                serializer.validated_data["type"],
                _own_data(request, serializer.validated_data["data"]),
                request_id=request.request_id,
                priority=serializer.validated_data.get("priority"),
                delay=serializer.validated_data.get("delay"),
            )
        except JobValidationError as exc:
            raise _invalid(exc) from None
        except TooManyLiveJobs as exc:
            raise TooManyJobs(wait=exc.retry_after, detail=str(exc)) from None
        return Response(
            JobSerializer(job, context=self.get_serializer_context()).data,
            status=status.HTTP_200_OK if job.deduplicated else status.HTTP_202_ACCEPTED,
        )


class JobBulkCreateView(EnqueueView):
    """`POST /api/queues/jobs/bulk`: enqueue many jobs of one client-enqueueable type as the
    caller, all or nothing; each counts as one job towards the rate and the live-job cap.

    202 with the jobs in the order of `items`; 200 when every one was already there (a unique
    type's duplicates, nothing stored)."""

    serializer_class = BulkEnqueueSerializer

    def jobs_asked(self, request):
        items = request.data.get("items") if isinstance(request.data, dict) else None
        return len(items) if isinstance(items, list) and items else 1

    @extend_schema(
        responses={
            202: JobListSerializer,
            200: JobListSerializer,
            **errors(*AUTHENTICATED, *WITH_BODY, 429),
        }
    )
    def post(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        items = serializer.validated_data["items"]
        try:
            jobs = services.enqueue_many_for_client(
                request.user,
                serializer.validated_data["queue"],
                serializer.validated_data["type"],
                [_own_data(request, data, index) for index, data in enumerate(items)],
                request_id=request.request_id,
                priority=serializer.validated_data.get("priority"),
                delay=serializer.validated_data.get("delay"),
            )
        except JobValidationError as exc:
            raise _invalid(exc, "items") from None
        except TooManyLiveJobs as exc:
            raise TooManyJobs(wait=exc.retry_after, detail=str(exc)) from None
        context = self.get_serializer_context()
        prefetch_related_objects(jobs, history.EVENTS)  # duplicates may have a history
        return Response(
            JobListSerializer({"jobs": jobs}, context=context).data,
            status=status.HTTP_200_OK
            if all(job.deduplicated for job in jobs)
            else status.HTTP_202_ACCEPTED,
        )


def _own_data(request, data, index=None):
    """`data` of a job the caller enqueues: its `user_id` is the caller's, or 400."""
    data = dict(data)
    if data.setdefault("user_id", request.user.pk) != request.user.pk:
        problem = {"user_id": ["Must be your own user id."]}
        if index is None:
            raise exceptions.ValidationError({"data": problem})
        raise exceptions.ValidationError({"items": {index: problem}})
    return data


def _invalid(exc, field="data"):
    """The 400 for a JobValidationError; a problem with an option (priority, delay) is named as
    such."""
    for option in services.OPTIONS:
        if option in exc.fields:
            return exceptions.ValidationError({option: exc.fields[option]})
    return exceptions.ValidationError({field: exc.fields or [str(exc)]})


@extend_schema(responses={200: StatsSerializer, **errors(*AUTHENTICATED)})
class QueueStatsView(generics.GenericAPIView):
    """`GET /api/queues/stats`: per queue counts, rates, run times, throughput
    (`queues.view_job`)."""

    permission_classes = [permissions.IsAuthenticated, HasJobPermission]
    serializer_class = StatsSerializer

    def get(self, request):
        return Response(self.get_serializer({"queues": selectors.queue_stats(conf.QUEUES)}).data)
