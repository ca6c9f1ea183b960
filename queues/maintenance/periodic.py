"""Periodic upkeep of the job tables, declared as periodic job types of the default queue: each
run is a job with its record, retries, metrics and dashboard row (`queues.core.periodic`).

Also the job type of the `func` entries of `QUEUE_SCHEDULES`: `call_function`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from django.utils.module_loading import import_string
from rest_framework import serializers

from queues.api import UserlessJobData, job_type
from queues.conf import conf
from queues.core.history import prune_orphaned_events
from queues.core.periodic import CALL_FUNCTION
from queues.maintenance.rescuer import rescue
from queues.models import Job, JobMinute

logger = logging.getLogger("queues.maintenance")


def prune_finished_jobs(now: datetime | None = None) -> int:
    """Retention: keep each user's newest N succeeded, M failed and K cancelled job records per
    queue (`JOB_RETENTION`), and none older than its status's age limit
    (`JOB_RETENTION_MAX_AGE`); a type may have its own counts and ages
    (`JOB_RETENTION_BY_TYPE`). Returns how many records it deleted.

    Counted per user, so one user's flood of jobs never evicts another user's records (jobs with
    no user, enqueued by the app itself, count as one more user); a type with its own counts is
    counted apart from the others. One DELETE per queue and status (and per type counted apart),
    ranking rows on `job_retention_finished_idx` (queue, status, user, finished_at); one per
    status and age limit, a range of `job_finished_idx`. Every DELETE names the status it
    selected, so a row retried while it runs is left alone.
    """
    apart = {
        type_name: {**conf.JOB_RETENTION, **rules["count"]}
        for type_name, rules in conf.JOB_RETENTION_BY_TYPE.items()
        if "count" in rules
    }
    deleted = 0
    for queue in conf.QUEUES:
        for status in Job.FINISHED:
            shared = Job.objects.filter(queue=queue, status=status)
            if apart:
                shared = shared.exclude(job_type__in=list(apart))
            deleted += _keep_newest(shared, status, conf.JOB_RETENTION[status])
            for type_name, counts in apart.items():
                own = Job.objects.filter(queue=queue, status=status, job_type=type_name)
                deleted += _keep_newest(own, status, counts[status])
    deleted += _prune_by_age(now or timezone.now())
    if deleted:
        logger.info("pruned %d finished job records", deleted)
    return deleted


def _keep_newest(jobs: QuerySet[Job], status: str, count: int) -> int:
    """Delete all but each user's newest `count` of `jobs` (all of one `status`)."""
    ranked = jobs.annotate(
        rank=Window(
            RowNumber(),
            partition_by=[F("user_id")],
            order_by=[F("finished_at").desc(nulls_last=True), F("id").desc()],
        )
    )
    older = ranked.filter(rank__gt=count).values("pk")
    # The status again in the DELETE's own condition: PostgreSQL re-checks it on a row changed
    # since the ranking read it, so a job an operator retried meanwhile (live again, with a new
    # broker row) is not deleted.
    return Job.objects.filter(pk__in=older, status=status).delete()[0]


def _prune_by_age(now: datetime) -> int:
    """Delete finished records older than their status's age limit, in every queue: the type's
    own (`JOB_RETENTION_BY_TYPE[type]["max_age"]`), else `JOB_RETENTION_MAX_AGE`'s. A retried
    job is live again (its status changed, `finished_at` cleared): no DELETE matches it."""
    own = {
        type_name: rules["max_age"]
        for type_name, rules in conf.JOB_RETENTION_BY_TYPE.items()
        if "max_age" in rules
    }
    deleted = 0
    for status in Job.FINISHED:
        typed = {name: ages[status] for name, ages in own.items() if status in ages}
        limits = [(Q(job_type=name), age) for name, age in typed.items()]
        others = ~Q(job_type__in=list(typed)) if typed else Q()
        limits.append((others, conf.JOB_RETENTION_MAX_AGE.get(status)))
        for which, age in limits:
            if age is not None:
                cutoff = now - retention_age(age)
                old = Job.objects.filter(which, status=status, finished_at__lt=cutoff)
                deleted += old.delete()[0]
    return deleted


def retention_age(value: timedelta | float) -> timedelta:
    """An age limit of the retention settings: a timedelta, or seconds."""
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


def prune_minute_stats(keep=timedelta(hours=2)):
    """Per-minute stats feed charts of the last hour; older minutes are dropped."""
    return JobMinute.objects.filter(minute__lt=timezone.now() - keep).delete()[0]


@transaction.atomic
def prune():
    """Everything the maintenance schedule does, every five minutes: in one transaction, so an idle
    cluster pays one BEGIN and COMMIT for its DELETEs instead of one pair each."""
    return prune_finished_jobs() + prune_orphaned_events() + prune_minute_stats()


def redeliver_stranded_jobs():
    """Rescue every queue (`rescuer`), also those whose pushers wait on busy workers."""
    return sum(rescue(queue) for queue in conf.QUEUES)


# Retention of finished job records, and per-minute stats older than two hours. Every five
# minutes: retention counts records, so a later prune only keeps a few more for a while, and an
# idle cluster sends fewer statements.
@job_type(
    "prune_job_records",
    queue=conf.DEFAULT_QUEUE,
    schema=UserlessJobData,
    every=timedelta(minutes=5),
)
def prune_job_records(data):
    return {"deleted": prune()}


# A rescue pass over every queue, for clusters whose pusher waits on busy workers (a pusher
# that dequeues runs one every QUEUE_RESCUE_INTERVAL itself).
@job_type(
    "redeliver_stranded_jobs",
    queue=conf.DEFAULT_QUEUE,
    schema=UserlessJobData,
    every=timedelta(minutes=1),
)
def redeliver_stranded_jobs_job(data):
    return {"rescued": redeliver_stranded_jobs()}


class FunctionData(UserlessJobData):
    func = serializers.CharField(max_length=200)


@job_type(CALL_FUNCTION, queue=conf.DEFAULT_QUEUE, schema=FunctionData)
def call_function(data):
    """Call the function a `func` entry of `QUEUE_SCHEDULES` names (the checks vouch that it
    imports); its return value is the result if JSON can hold it."""
    result = import_string(data["func"])()
    return result if isinstance(result, int | float | str | bool | list | dict) else None
