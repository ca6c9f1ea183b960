"""The staff queue dashboard: server-rendered HTML and SVG, refreshed by the browser."""

from datetime import timedelta

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from queues import pausing, selectors
from queues.cancellation import cancel_jobs
from queues.conf import conf
from queues.heartbeats import live_clusters
from queues.models import Job
from queues.services import retry_jobs

CHART_WIDTH, CHART_HEIGHT, MINUTES = 600, 120, 60
PERCENTILES = (0.5, 0.9, 0.95, 0.99)


def minute_bars(per_minute, now):
    """Bars for the last hour, one slot a minute: succeeded stacked over failed attempts."""
    slot = CHART_WIDTH / MINUTES
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES - 1)
    by_minute = {m["minute"]: m for m in per_minute}
    rows = [by_minute.get(start + timedelta(minutes=i), {}) for i in range(MINUTES)]
    peak = max([r.get("succeeded", 0) + r.get("failed", 0) for r in rows] + [1])
    bars = []
    for i, row in enumerate(rows):
        ok_h = CHART_HEIGHT * row.get("succeeded", 0) / peak
        fail_h = CHART_HEIGHT * row.get("failed", 0) / peak
        bars.append(
            {
                "x": round(i * slot, 1),
                "width": round(slot - 1, 1),
                "ok_y": round(CHART_HEIGHT - ok_h, 1),
                "ok_h": round(ok_h, 1),
                "fail_y": round(CHART_HEIGHT - ok_h - fail_h, 1),
                "fail_h": round(fail_h, 1),
                "label": f"{start + timedelta(minutes=i):%H:%M}: {row.get('succeeded', 0)} ok, "
                f"{row.get('failed', 0)} failed",
            }
        )
    return {"bars": bars, "peak": peak}


def percentile_bars(buckets):
    values = [(q, selectors.quantile(buckets, q)) for q in PERCENTILES]
    peak = max([v for _, v in values if v] + [0.001])
    bar_width = CHART_WIDTH / len(values)
    return [
        {
            "label": f"p{round(q * 100)}",
            "seconds": v,
            "x": round(i * bar_width + 10, 1),
            "width": round(bar_width - 20, 1),
            "h": round(CHART_HEIGHT * (v or 0) / peak, 1),
            "y": round(CHART_HEIGHT - CHART_HEIGHT * (v or 0) / peak, 1),
        }
        for i, (q, v) in enumerate(values)
    ]


def retrying_jobs(now):
    """Jobs in their backoff: which attempt failed, why, and in how many seconds the next runs."""
    jobs = list(Job.objects.filter(status=Job.Status.RETRYING).order_by("run_after")[:20])
    for job in jobs:
        job.next_attempt_in = max((job.run_after - now).total_seconds(), 0)
    return jobs


# Staff sign in through the admin; what they may see and do is the job permissions.
@staff_member_required
@permission_required("queues.view_job", raise_exception=True)
def queue_dashboard(request):
    now = timezone.now()
    stats = selectors.queue_stats(conf.QUEUES)
    totals = selectors.counter_totals()
    paused = pausing.paused_queues()
    cards = []
    for queue, queue_stats in stats.items():
        buckets, _, _ = selectors.histogram(totals, queue, "run_seconds")
        cards.append(
            {
                "queue": queue,
                "stats": queue_stats,
                "throughput": minute_bars(queue_stats["per_minute"], now),
                "percentiles": percentile_bars(buckets),
                "pause": paused.get(queue),
            }
        )
    context = {
        "cards": cards,
        "chart": {"width": CHART_WIDTH, "height": CHART_HEIGHT},
        # Error text redacted where it may be content (`Job.redact_for`), as everywhere.
        "retrying_jobs": [job.redact_for(request.user) for job in retrying_jobs(now)],
        "running_jobs": Job.objects.filter(status=Job.Status.RUNNING).order_by("started_at")[:20],
        "failed_jobs": [
            job.redact_for(request.user)
            for job in Job.objects.filter(status=Job.Status.FAILED).order_by("-finished_at")[:20]
        ],
        "clusters": live_clusters().order_by("queue", "host", "pid"),
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
@require_POST
def pause_queue(request, queue):
    if queue not in conf.QUEUES:
        raise Http404("No such queue.")
    if request.POST.get("action") == "resume":
        pausing.resume(queue, by=request.user)
        messages.success(request, f"Queue {queue} resumed.")
    else:
        pausing.pause(queue, by=request.user)
        messages.success(request, f"Queue {queue} paused: running jobs finish, no job starts.")
    # Back to the dashboard, or for one who may pause but not see jobs, to the paused queues.
    if request.user.has_perm("queues.view_job"):
        return redirect("queue-dashboard")
    return redirect("admin:queues_queuepause_changelist")
