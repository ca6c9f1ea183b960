"""Who did what to a job, and when: the job's history (`JobEvent`).

Every function that acts on a job for someone (cancel, stop request, retry) records the action
here, in its own transaction, so the history never shows an action that rolled back, nor misses
one that committed.
"""

from django.db.models import Exists, OuterRef, Prefetch

from queues.models import Job, JobEvent


def record(jobs, action, *, by=None, detail=""):
    """One `action` event per job of `jobs`, by user `by` (None: the system or `manage.py`)."""
    JobEvent.objects.bulk_create(
        [JobEvent(job_id=job.pk, action=action, by=by, detail=detail) for job in jobs]
    )


# Prefetches the events of many jobs at once, with who did each (`prefetch_related_objects`).
EVENTS = Prefetch("events", queryset=JobEvent.objects.select_related("by"))


def events_of(job):
    """The job's events, oldest first: from the `EVENTS` prefetch when the caller made it."""
    return job.events.all()


def prune_orphaned_events():
    """The events of job records that retention (or an admin) deleted. Returns how many."""
    orphaned = JobEvent.objects.exclude(Exists(Job.objects.filter(pk=OuterRef("job_id"))))
    return orphaned.delete()[0]
