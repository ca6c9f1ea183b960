"""Reads on jobs."""

from queues.models import Job


def jobs_visible_to(user):
    """Staff see every job; anyone else the jobs they enqueued."""
    return Job.objects.all() if user.is_staff else Job.objects.filter(user=user)


def subjects_with_live_jobs(job_type, subjects):
    """Those of `subjects` that have a queued, running or retrying job of `job_type`."""
    return set(
        Job.objects.filter(
            job_type=job_type, subject__in=subjects, status__in=Job.LIVE
        ).values_list("subject", flat=True)
    )
