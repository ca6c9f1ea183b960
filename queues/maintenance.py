"""Periodic upkeep of the job tables, run by django-q2's scheduler (see migration 0002)."""

import logging

from django.conf import settings

from queues.models import Job

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
