"""Periodic upkeep of the job tables, run by django-q2's scheduler (migrations 0002, 0008, 0009)."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from queues.broker import push
from queues.models import Job, JobMinute

logger = logging.getLogger("queues.maintenance")

REDELIVERY_BATCH = 1000


def prune_finished_jobs():
    """Keep each user's newest N succeeded, M failed and K cancelled job records per queue.

    Counted per user, so one user's flood of jobs never evicts another user's records (jobs with
    no user, enqueued by the app itself, count as one more user). One DELETE per queue and status,
    ranking rows on `job_retention_idx` (queue, status, user, finished_at).
    """
    keep = {
        Job.Status.SUCCEEDED: settings.JOB_RETENTION["succeeded"],
        Job.Status.FAILED: settings.JOB_RETENTION["failed"],
        Job.Status.CANCELLED: settings.JOB_RETENTION["cancelled"],
    }
    deleted = 0
    for queue in settings.QUEUES:
        for status, count in keep.items():
            ranked = Job.objects.filter(queue=queue, status=status).annotate(
                rank=Window(
                    RowNumber(),
                    partition_by=[F("user_id")],
                    order_by=[F("finished_at").desc(nulls_last=True), F("id").desc()],
                )
            )
            older = ranked.filter(rank__gt=count).values("pk")
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
    """On a broker outside the database (Redis), push again the jobs whose delivery was lost.

    Redis forgets a task its worker died with, and a push can be lost between the job's commit and
    Redis. A job still waiting well past its time, or running well past its timeout, is pushed
    again: the runner tells a stale copy or a live attempt from a lost one, so a spare delivery
    does nothing. The job's `run_after` moves to now, so a job (or a long backlog) is pushed again
    at most once per timeout, not at every run. The database broker redelivers by itself.
    """
    from django_q.brokers import get_broker

    now = timezone.now()
    pushed = 0
    for queue, options in settings.QUEUES.items():
        if getattr(get_broker(queue), "joins_transactions", True):
            continue
        cutoff = now - timedelta(seconds=options["timeout"] + settings.QUEUE_REDELIVERY_GRACE)
        stranded = Job.objects.filter(queue=queue, run_after__lt=cutoff).filter(
            Q(status__in=Job.WAITING) | Q(status=Job.Status.RUNNING, started_at__lt=cutoff)
        )
        for job in stranded.order_by("run_after")[:REDELIVERY_BATCH]:
            with transaction.atomic():
                Job.objects.filter(pk=job.pk, status=job.status).update(run_after=now)
                job.run_after = now
                push(job)
            pushed += 1
    if pushed:
        logger.warning("pushed %d stranded job(s) again", pushed)
    return pushed
