"""Periodic upkeep of the job tables, run by django-q2's scheduler (migrations 0002, 0008, 0009)."""

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from queues.models import Job, JobMinute
from queues.rescuer import rescue

logger = logging.getLogger("queues.maintenance")


def prune_finished_jobs():
    """Keep the newest N succeeded (and cancelled) and M failed job records per queue.

    One indexed DELETE per queue and status (`job_retention_idx`), however many jobs ran since the
    last prune: no per-job scan or lock, unlike django-q2's `save_limit`.
    """
    keep = {
        Job.Status.SUCCEEDED: settings.JOB_RETENTION["succeeded"],
        Job.Status.FAILED: settings.JOB_RETENTION["failed"],
    }
    deleted = 0
    for queue in settings.QUEUES:
        for status, count in keep.items():
            older = (
                Job.objects.filter(queue=queue, status=status)
                .order_by("-finished_at", "-id")
                .values("pk")[count:]
            )
            deleted += Job.objects.filter(pk__in=older).delete()[0]
    if deleted:
        logger.info("pruned %d finished job records", deleted)
    return deleted


def prune_minute_stats(keep=timedelta(hours=2)):
    """Per-minute stats feed charts of the last hour; older minutes are dropped."""
    return JobMinute.objects.filter(minute__lt=timezone.now() - keep).delete()[0]


def prune():
    """Everything the maintenance schedule does, once a minute."""
    return prune_finished_jobs() + prune_minute_stats()


def redeliver_stranded_jobs():
    """Rescue every queue (`queues.rescuer`), also those whose pushers wait on busy workers."""
    return sum(rescue(queue) for queue in settings.QUEUES)
