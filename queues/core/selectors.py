"""Reads on jobs: records, counters, cluster heartbeats."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.contrib.auth import get_user_model
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from queues.core.registry import types_with_content
from queues.django_q2.heartbeats import live_clusters
from queues.engine import engine
from queues.models import (
    HISTOGRAM_BUCKETS,
    Job,
    JobCounter,
    JobMinute,
    QueuePause,
    ScheduleFailureCounter,
    bucket_column,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# {(queue, job_type, column): total}: `JobCounter`'s columns summed over its shards.
Totals = dict[tuple[str, str, str], float]
# Cumulative (upper bound in seconds, observations at most that long) pairs of a histogram.
Buckets = list[tuple[float, float]]


def jobs_visible_to(user: User) -> QuerySet[Job]:
    """Holders of `queues.view_job` see every job record; anyone else the jobs they enqueued."""
    return Job.objects.all() if user.has_perm("queues.view_job") else Job.objects.filter(user=user)


def search_jobs(
    viewer: User,
    *,
    job_id: UUID | None = None,
    job_type: str | Sequence[str] = "",
    status: str | Sequence[str] = "",
    queue: str | Sequence[str] = "",
    user: str = "",
    subject: str = "",
    request_id: str = "",
    q: str = "",
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    finished_after: datetime | None = None,
    finished_before: datetime | None = None,
) -> QuerySet[Job]:
    """The jobs `viewer` may see that match every given filter: the dashboard's Jobs page, the
    job list of the API and `manage.py jobs`.

    `job_type`, `status` and `queue` take one value or several (any of them). `user` is a
    username or a user id; one that names nobody matches no job, like any filter. `q` is a job
    id, a subject or a request id (an exact match on one of them, each indexed). Every filter
    applies within `jobs_visible_to(viewer)`, so a filter on what another user's jobs hold
    answers as if they did not exist.
    """
    jobs = jobs_visible_to(viewer)
    if job_id:
        jobs = jobs.filter(pk=job_id)
    for field, value in (("job_type", job_type), ("status", status), ("queue", queue)):
        if isinstance(value, str) and value:
            jobs = jobs.filter(**{field: value})
        elif not isinstance(value, str) and value:
            jobs = jobs.filter(**{f"{field}__in": list(value)})
    if user:
        named = Q(username=user) | (Q(pk=int(user)) if user.isascii() and user.isdigit() else Q())
        # Looked up first: the planner then sees the ids and picks the user's index.
        users = list(get_user_model().objects.filter(named).values_list("pk", flat=True))
        jobs = jobs.filter(user__in=users)
    if subject:
        jobs = jobs.filter(subject=subject)
    if request_id:
        jobs = jobs.filter(request_id=request_id)
    if q:
        jobs = jobs.filter(_search(q))
    if created_after:
        jobs = jobs.filter(created_at__gte=created_after)
    if created_before:
        jobs = jobs.filter(created_at__lte=created_before)
    if finished_after:
        jobs = jobs.filter(finished_at__gte=finished_after)
    if finished_before:
        jobs = jobs.filter(finished_at__lte=finished_before)
    return jobs


def _search(text: str) -> Q:
    """Jobs whose id, subject or request id is `text`: equalities, so each uses its index."""
    match = Q(subject=text) | Q(request_id=text)
    try:
        return match | Q(pk=UUID(text))
    except ValueError:
        return match


def jobs_page(
    jobs: QuerySet[Job],
    *,
    older_than: tuple[datetime, UUID] | None = None,
    newer_than: tuple[datetime, UUID] | None = None,
    size: int = 50,
) -> tuple[list[Job], bool, bool]:
    """One page of `jobs`, newest first: (jobs, whether newer ones exist, whether older do).

    Keyset pagination on (created_at, id): each page is one index range scan of `size` + 1 rows
    starting at a position (`older_than` or `newer_than`, a (created_at, id) pair), however deep
    the page, where an offset would read and skip every row before it.
    """
    if newer_than:
        created_at, pk = newer_than
        after = jobs.filter(created_at__gte=created_at).exclude(created_at=created_at, pk__lte=pk)
        rows = list(after.order_by("created_at", "id")[: size + 1])
        return rows[:size][::-1], len(rows) > size, True
    if older_than:
        created_at, pk = older_than
        jobs = jobs.filter(created_at__lte=created_at).exclude(created_at=created_at, pk__gte=pk)
    rows = list(jobs.order_by("-created_at", "-id")[: size + 1])
    return rows[:size], older_than is not None, len(rows) > size


def keeps_content_about(subject: str) -> bool:
    """Whether a job record of a type that carries user content is about `subject`: what
    `forget_subject` would erase. One prepared statement on PostgreSQL (a deletion asks it)."""
    return engine().keeps_content_about(subject, types_with_content())


def keeps_content_about_sql(subject: str) -> tuple[str, list]:
    """`keeps_content_about` as (a boolean SQL expression, its parameters) for the caller's own
    statement: a deletion asks it in its DELETE, without a round trip of its own. Its text is the
    same for every subject on PostgreSQL (`queues.api.prepared_cursor` can prepare it)."""
    return engine().keeps_content_about_sql(subject, types_with_content())


def subjects_with_live_jobs(job_type: str, subjects: Iterable[str]) -> set[str]:
    """Those of `subjects` with a job of `job_type` on its way: running, or waiting and not
    overdue (`Job.OVERDUE_AFTER`: its delivery is lost), or waiting in a paused queue."""
    on_time = timezone.now() - Job.OVERDUE_AFTER
    paused = QueuePause.objects.values("queue")
    return set(
        Job.objects.filter(job_type=job_type, subject__in=subjects)
        .filter(
            Q(status=Job.Status.RUNNING)
            | Q(status__in=Job.WAITING, run_after__gte=on_time)
            | Q(status__in=Job.WAITING, queue__in=paused)
        )
        .values_list("subject", flat=True)
    )


def subjects_with_failed_jobs(job_type: str, subjects: Iterable[str]) -> set[str]:
    """Those of `subjects` that have a job of `job_type` that failed for good."""
    return set(
        Job.objects.filter(
            job_type=job_type, subject__in=subjects, status=Job.Status.FAILED
        ).values_list("subject", flat=True)
    )


def counter_totals() -> Totals:
    """{(queue, job_type, column): total} of `JobCounter`'s counting columns, summed over the
    shards. One query."""
    columns = JobCounter.counted_fields()
    rows = JobCounter.objects.values_list("queue", "job_type").annotate(*map(Sum, columns))
    return {
        (queue, job_type, column): total
        for queue, job_type, *totals in rows
        for column, total in zip(columns, totals, strict=True)
    }


def oldest_due_job(queue: str, job_types: Iterable[str] | None = None) -> Job | None:
    """The waiting job of `queue` (of `job_types`, if given) due longest, or None."""
    due = Job.objects.filter(queue=queue, status__in=Job.WAITING, run_after__lte=timezone.now())
    if job_types is not None:
        due = due.filter(job_type__in=job_types)
    return due.order_by("run_after").only("run_after").first()


def live_cluster_counts() -> dict[str, int]:
    """{queue: number of clusters seen within the last 30 s}."""
    rows = live_clusters().values("queue").annotate(n=Count("key"))
    return {r["queue"]: r["n"] for r in rows}


def minutes_since(start: datetime) -> QuerySet[JobMinute, Mapping[str, Any]]:
    """Per queue and minute: succeeded jobs and failed attempts since `start`."""
    return (
        JobMinute.objects.filter(minute__gte=start)
        .values("queue", "minute")
        .annotate(succeeded=Sum("succeeded"), failed=Sum("failed"))
        .order_by("queue", "minute")
    )


def histogram(
    totals: Totals, queue: str, series: str, job_type: str | None = None
) -> tuple[Buckets, float, float]:
    """Cumulative (bound, count) pairs, sum and count of one series, over one or all types."""

    def total(name: str) -> float:
        return sum(
            v
            for (q, t, n), v in totals.items()
            if q == queue and n == name and (job_type is None or t == job_type)
        )

    buckets = [(bound, total(bucket_column(series, bound))) for bound in HISTOGRAM_BUCKETS]
    return buckets, total(f"{series}_sum"), buckets[-1][1]


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds q."""
    count = buckets[-1][1] if buckets else 0
    if not count:
        return None
    rank, lower, below = q * count, 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0)
        lower, below = bound, cumulative
    return lower


def queue_stats(queues: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The snapshot behind `/api/queues/stats` and the dashboard: one dict per queue."""
    now = timezone.now()
    totals = counter_totals()
    clusters = live_cluster_counts()
    minutes = list(minutes_since(now - timedelta(minutes=61)))
    paused = QueuePause.objects.in_bulk()
    stats = {}
    for queue in queues:

        def total(name: str, queue: str = queue) -> float:
            return sum(v for (q, _, n), v in totals.items() if q == queue and n == name)

        succeeded, failed = total("succeeded"), total("failed")
        buckets, run_sum, run_count = histogram(totals, queue, "run_seconds")
        # A paused queue's jobs wait on purpose: not a backlog.
        oldest = None if queue in paused else oldest_due_job(queue)
        throughput = {}
        for window in (1, 5, 60):
            # Every minute bucket that overlaps the window, the oldest one in full.
            since = (now - timedelta(minutes=window)).replace(second=0, microsecond=0)
            done = sum(
                m["succeeded"] for m in minutes if m["queue"] == queue and m["minute"] >= since
            )
            throughput[f"{window}m"] = round(done / window, 2)
        stats[queue] = {
            "waiting": int(total("waiting")),
            "running": int(total("running")),
            "succeeded": int(succeeded),
            "failed": int(failed),
            "cancelled": int(total("cancelled")),
            "enqueued": int(total("enqueued")),
            "attempts_failed": int(total("attempts_failed")),
            "retries_scheduled": int(total("retries_scheduled")),
            "success_rate": round(succeeded / (succeeded + failed), 4)
            if succeeded + failed
            else None,
            "run_seconds_avg": round(run_sum / run_count, 4) if run_count else None,
            "run_seconds_p95": quantile(buckets, 0.95),
            "throughput_per_minute": throughput,
            "oldest_waiting_seconds": (
                round((now - oldest.run_after).total_seconds(), 3) if oldest else 0.0
            ),
            "live_clusters": clusters.get(queue, 0),
            "paused": queue in paused,
            "paused_at": paused[queue].paused_at if queue in paused else None,
            "per_minute": [
                {"minute": m["minute"], "succeeded": m["succeeded"], "failed": m["failed"]}
                for m in minutes
                if m["queue"] == queue
            ],
        }
    return stats


def failing_schedules() -> QuerySet[ScheduleFailureCounter]:
    """Schedules that have failed, the latest failure first (`queues.django_q2.scheduler`)."""
    return ScheduleFailureCounter.objects.order_by("-last_failed_at", "schedule")
