"""The staff queue dashboard: server-rendered HTML and SVG, refreshed by the browser.

Every number says its window: "now" counts the job records the lists below show, the last hour
is the throughput chart's 60 minutes, "all time" is the counters since the database began.
"""

from datetime import timedelta

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.db.models import Count
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from queues.conf import conf
from queues.core import pausing, selectors
from queues.core.services import retry_jobs
from queues.django_q2.heartbeats import clusters_serving
from queues.execution.cancellation import cancel_jobs
from queues.models import Job

MINUTES, LISTED = 60, 20
# The throughput chart: one slot a minute, axes in the margins.
SLOT, PLOT_HEIGHT, LEFT, TOP, BOTTOM = 9, 110, 30, 8, 20
PERCENTILES = (0.5, 0.9, 0.95, 0.99)
PERCENTILE_ROW, PERCENTILE_LEFT, PERCENTILE_WIDTH = 16, 34, 460
# The statuses whose jobs the dashboard lists (and counts, per queue).
LISTED_STATUSES = (Job.Status.RUNNING, Job.Status.RETRYING, Job.Status.FAILED)


def nice_ticks(peak, most=4):
    """Axis ticks from 0 to a round top at or above `peak`: steps of 1, 2 or 5 times a power
    of ten, at most `most` steps."""
    magnitude = 1
    while True:
        for step in (magnitude, 2 * magnitude, 5 * magnitude):
            if peak <= step * most:
                top = max(-(-peak // step), 1) * step
                return list(range(0, top + 1, step))
        magnitude *= 10


def minute_chart(per_minute, now):
    """The last hour, one slot a minute up to the current one: succeeded jobs stacked under
    failed attempts, a count axis and a time axis (every 10 minutes), and the hour's totals."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES - 1)
    by_minute = {m["minute"]: m for m in per_minute}
    minutes = [start + timedelta(minutes=i) for i in range(MINUTES)]
    rows = [by_minute.get(minute, {}) for minute in minutes]
    succeeded = [row.get("succeeded", 0) for row in rows]
    failed = [row.get("failed", 0) for row in rows]
    ticks = nice_ticks(max(s + f for s, f in zip(succeeded, failed, strict=True)))
    scale = PLOT_HEIGHT / ticks[-1]
    base = TOP + PLOT_HEIGHT

    def height(count):
        return max(round(count * scale, 1), 2) if count else 0  # one job stays visible

    bars = []
    for i, (minute, ok, bad) in enumerate(zip(minutes, succeeded, failed, strict=True)):
        ok_h, fail_h = height(ok), height(bad)
        bars.append(
            {
                "x": LEFT + i * SLOT + 1,
                "width": SLOT - 2,
                "ok_y": round(base - ok_h, 1),
                "ok_h": ok_h,
                "fail_y": round(base - ok_h - fail_h, 1),
                "fail_h": fail_h,
                "label": f"{minute:%H:%M}: {ok} succeeded, {bad} failed attempt(s)",
            }
        )
    return {
        "bars": bars,
        "y_ticks": [{"y": round(base - tick * scale, 1), "label": tick} for tick in ticks],
        "x_ticks": [
            {"x": LEFT + i * SLOT + SLOT // 2, "label": f"{minute:%H:%M}"}
            for i, minute in enumerate(minutes)
            if minute.minute % 10 == 0
        ],
        # "now" under the current minute, unless a time label is already that close.
        "now_label": all(minute.minute % 10 for minute in minutes[-5:]),
        "start": start,
        "succeeded": sum(succeeded),
        "failed_attempts": sum(failed),
        "width": LEFT + MINUTES * SLOT + 16,  # room for a time label under the last minute
        "height": base + BOTTOM,
        "plot_left": LEFT,
        "plot_right": LEFT + MINUTES * SLOT,
        "base": base,
        "label_y": base + 15,
    }


def percentile_bars(buckets):
    """Run time percentiles as horizontal bars, one row each, on a common scale."""
    values = [(q, selectors.quantile(buckets, q)) for q in PERCENTILES]
    peak = max([v for _, v in values if v] + [0.001])
    return {
        "rows": [
            {
                "label": f"p{round(q * 100)}",
                "seconds": v,
                "y": i * PERCENTILE_ROW,
                "text_y": i * PERCENTILE_ROW + 12,
                "width": round(PERCENTILE_WIDTH * (v or 0) / peak, 1),
            }
            for i, (q, v) in enumerate(values)
        ],
        "bar_left": PERCENTILE_LEFT,
        "value_x": PERCENTILE_LEFT + PERCENTILE_WIDTH + 6,
        "width": PERCENTILE_LEFT + PERCENTILE_WIDTH + 80,
        "height": len(values) * PERCENTILE_ROW,
    }


def listed_counts():
    """{(queue, status): jobs} for the statuses the dashboard lists, from the job records.

    Live and failed jobs apart, each counted from the partial index that holds its rows
    (`job_live_status_idx`; `job_retention_finished_idx`, an index-only scan): one query over
    the three statuses reads the whole table."""
    live = Job.objects.filter(status__in=[Job.Status.RUNNING, Job.Status.RETRYING])
    failed = Job.objects.filter(status=Job.Status.FAILED)
    counts = {}
    for jobs in (live, failed):
        rows = jobs.values_list("queue", "status").annotate(n=Count("*")).order_by()
        counts.update(((queue, status), n) for queue, status, n in rows)
    return counts


def retrying_jobs(now):
    """Jobs in their backoff: which attempt failed, why, and in how many seconds the next runs."""
    jobs = list(Job.objects.filter(status=Job.Status.RETRYING).order_by("run_after")[:LISTED])
    for job in jobs:
        job.next_attempt_in = max((job.run_after - now).total_seconds(), 0)
    return jobs


def job_list(status, jobs, counts):
    """A list of the dashboard: its first jobs and how many there are in all queues."""
    total = sum(n for (_, s), n in counts.items() if s == status)
    return {"jobs": jobs, "total": total, "more": total - len(jobs)}


# Staff sign in through the admin; what they may see and do is the job permissions.
@staff_member_required
@permission_required("queues.view_job", raise_exception=True)
def queue_dashboard(request):
    now = timezone.now()
    stats = selectors.queue_stats(conf.QUEUES)
    totals = selectors.counter_totals()
    paused = pausing.paused_queues()
    counts = listed_counts()
    cards = []
    for queue, queue_stats in stats.items():
        buckets, _, _ = selectors.histogram(totals, queue, "run_seconds")
        throughput = minute_chart(queue_stats["per_minute"], now)
        attempts = throughput["succeeded"] + throughput["failed_attempts"]
        cards.append(
            {
                "queue": queue,
                "stats": queue_stats,
                "now": {status: counts.get((queue, status), 0) for status in LISTED_STATUSES},
                "throughput": throughput,
                "attempt_success": throughput["succeeded"] / attempts if attempts else None,
                "percentiles": percentile_bars(buckets),
                "pause": paused.get(queue),
            }
        )
    running = Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at")[:LISTED]
    failed = Job.objects.filter(status=Job.Status.FAILED).order_by("-finished_at")[:LISTED]
    context = {
        "cards": cards,
        "many_queues": len(cards) > 1,
        # Error text redacted where it may be content (`Job.redact_for`), as everywhere.
        "failed": job_list(
            Job.Status.FAILED, [job.redact_for(request.user) for job in failed], counts
        ),
        "retrying": job_list(
            Job.Status.RETRYING,
            [job.redact_for(request.user) for job in retrying_jobs(now)],
            counts,
        ),
        "running": job_list(
            Job.Status.RUNNING, [job.redact_for(request.user) for job in running], counts
        ),
        "clusters": clusters_serving(),
        "failing_schedules": selectors.failing_schedules()[:20],
        "refresh_seconds": 5,
        "now": now,
    }
    return render(request, "queues/dashboard.html", context)


@staff_member_required
@permission_required("queues.change_job", raise_exception=True)
@require_POST
def retry_job(request, job_id):
    job = get_object_or_404(Job, pk=job_id)
    if retry_jobs(Job.objects.filter(pk=job.pk), by=request.user):
        messages.success(request, f"Job {job.pk} sent back to its queue.")
    else:
        messages.warning(request, f"Job {job.pk} is not failed; nothing to retry.")
    return redirect("queue-dashboard")


@staff_member_required
@permission_required("queues.change_job", raise_exception=True)
@require_POST
def cancel_job(request, job_id):
    """Cancel a waiting job, or ask a running one to stop."""
    job = get_object_or_404(Job, pk=job_id)
    cancelled, stopping = cancel_jobs(Job.objects.filter(pk=job.pk), by=request.user)
    if cancelled:
        messages.success(request, f"Job {job.pk} cancelled.")
    elif stopping:
        messages.success(request, f"Job {job.pk} asked to stop; it stops at its next check.")
    else:
        messages.warning(request, f"Job {job.pk} has finished or was already asked to stop.")
    return redirect("queue-dashboard")


@staff_member_required
@permission_required("queues.pause_queue", raise_exception=True)
@require_http_methods(["GET", "POST"])
def pause_queue(request, queue):
    """Resume at once; pause only once confirmed: anything else shows the confirmation page."""
    if queue not in conf.QUEUES:
        raise Http404("No such queue.")
    action = request.POST.get("action")
    if action == "resume":
        pausing.resume(queue, by=request.user)
        messages.success(request, f"Queue {queue} resumed.")
    elif action == "pause" and request.POST.get("confirm") == "yes":
        pausing.pause(queue, by=request.user)
        messages.success(request, f"Queue {queue} paused: running jobs finish, no job starts.")
    else:
        sees_jobs = request.user.has_perm("queues.view_job")
        context = {
            "queue": queue,
            "pause": pausing.paused_queues().get(queue),
            "stats": selectors.queue_stats([queue])[queue] if sees_jobs else None,
            "back": back_from_pausing(request.user),
        }
        return render(request, "queues/pause_confirm.html", context)
    return redirect(back_from_pausing(request.user))


def back_from_pausing(user):
    """The dashboard, or for one who may pause but not see jobs, the paused queues' admin list."""
    if user.has_perm("queues.view_job"):
        return reverse("queue-dashboard")
    return reverse("admin:queues_queuepause_changelist")
