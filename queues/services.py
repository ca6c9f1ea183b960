"""Writes on jobs: enqueue one, retry failed ones."""

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import F
from django.db.models.expressions import RawSQL
from django.utils import timezone

from queues import counters, registry, tracing
from queues.broker import push, push_statement
from queues.errors import TooManyLiveJobs
from queues.models import Job
from queues.statements import insert_statement
from slimy import log_context
from slimy.request_id import new_request_id

logger = logging.getLogger("queues.services")


@transaction.atomic
def enqueue_for_client(user, queue, job_type, data, *, request_id=None):
    """`enqueue` on behalf of an API client: only declared types, and a cap on live jobs.

    The user's row is locked while counting, so concurrent requests of one user cannot all pass
    the cap together; other users never wait on it.
    """
    registry.get(queue, job_type, client=True)
    get_user_model().objects.select_for_update().filter(pk=user.pk).exists()
    cap = settings.CLIENT_LIVE_JOBS_PER_USER
    client_types = [name for name, kind in registry.all_types().items() if kind.client_enqueueable]
    live = Job.objects.filter(user=user, status__in=Job.LIVE, job_type__in=client_types)
    if live.count() >= cap:
        raise TooManyLiveJobs(f"{cap} of your jobs are still waiting or running")
    return enqueue(queue, job_type, {**data, "user_id": user.pk}, request_id=request_id)


def enqueue(queue, job_type, data, *, request_id=None, user_checked=False):
    """Validate and store a job of `job_type` on `queue`, in the caller's transaction.

    The counterpart of the original `queueManager.addJob(queue, type, data)`. `data` must carry
    `user_id`; `request_id` defaults to the current request's. Unknown queue or type, or data
    that does not fit the type's schema, raise `JobValidationError` and store nothing.
    `user_checked`: the caller read `user_id` from a row that refers to the user (its foreign key
    vouches for it), so validation does not look the user up again.
    """
    kind = registry.get(queue, job_type)
    data = {**data}
    data.setdefault(
        "request_id", request_id or log_context.current().get("request_id") or new_request_id()
    )
    cleaned = dict(kind.validate(data, user_checked=user_checked))
    # No savepoint inside the caller's transaction (two round trips saved): an error here
    # propagates and rolls the caller's transaction back anyway.
    job = Job(
        queue=queue,
        job_type=job_type,
        data=cleaned,
        subject=kind.subject_of(cleaned),
        user_id=cleaned["user_id"],
        request_id=cleaned["request_id"],
        max_attempts=kind.retry_policy.attempts,
        trace_context=tracing.capture(),
    )
    with transaction.atomic(savepoint=False):
        broker_row = push_statement(job)
        if broker_row is None:  # SQLite, or a broker outside the database (Redis)
            job.broker_row = push(job)  # the row first, so the job is stored knowing it
            job.save(force_insert=True)
            counters.job_enqueued(job)
        else:
            # One round trip on PostgreSQL: the record, which stores its broker row's id, the row
            # (its RETURNING sends the NOTIFY, delivered at commit) and the counters.
            job.broker_row = RawSQL(f"SELECT id FROM {broker_row[2]}", [])
            ((job.broker_row,),) = counters.job_enqueued(
                job, also=[insert_statement(job, returning="broker_row"), broker_row]
            )
            job._state.adding, job._state.db = False, DEFAULT_DB_ALIAS  # as `save()` leaves it
    return job


@transaction.atomic
def retry_jobs(jobs, *, by=None):
    """Send failed jobs back to their queue with a fresh attempt budget. Returns how many."""
    now = timezone.now()
    count = 0
    failed = Job.objects.select_for_update().filter(
        pk__in=jobs.values("pk"), status=Job.Status.FAILED
    )
    for job in failed:
        kind = registry.find(job.job_type)
        job.status = Job.Status.QUEUED
        job.max_attempts = F("attempts") + (kind.retry_policy.attempts if kind else 1)
        job.run_after = now
        job.finished_at = None
        job.retried_by = by
        job.retried_at = now
        job.broker_row = push(job)
        job.save()
        job.refresh_from_db(fields=["max_attempts"])
        counters.retried_by_operator(job)
        count += 1
    return count


@transaction.atomic
def delete_finished_jobs(jobs, *, by=None):
    """Delete the records of those of `jobs` that are finished; a live job is never touched.

    The finished ones are locked first, so a job an operator retries meanwhile either waits for
    this deletion or, retried first, is no longer finished and stays. Returns how many.
    """
    finished = Job.objects.select_for_update().filter(
        pk__in=jobs.values("pk"), status__in=Job.FINISHED
    )
    deleted, _ = Job.objects.filter(pk__in=list(finished.values_list("pk", flat=True))).delete()
    if deleted:
        logger.info("%d finished job records deleted by %s", deleted, by)
    return deleted


def cancel_waiting_jobs(subject, job_type):
    """Withdraw the not-yet-started jobs of `job_type` about `subject`. Returns how many.

    Their broker rows stay; the runner skips a delivery of a finished job.
    """
    cancelled = Job.objects.filter(
        subject=subject, job_type=job_type, status__in=Job.WAITING
    ).update(status=Job.Status.CANCELLED, finished_at=timezone.now())
    counters.jobs_cancelled(registry.find(job_type).queue, job_type, cancelled)
    return cancelled


def _cancel_waiting_content_jobs(jobs):
    """Withdraw those of `jobs` that wait and carry user content (they could only fail)."""
    waiting = jobs.filter(status__in=Job.WAITING, job_type__in=registry.types_with_content())
    for queue, job_type in set(waiting.values_list("queue", "job_type")):
        cancelled = waiting.filter(queue=queue, job_type=job_type).update(
            status=Job.Status.CANCELLED, finished_at=timezone.now()
        )
        counters.jobs_cancelled(queue, job_type, cancelled)


def forget_subject(subject):
    """What `subject` names is gone: withdraw its waiting jobs that carry user content, and
    erase the content of every job record about it. Returns how many records were scrubbed."""
    _cancel_waiting_content_jobs(Job.objects.filter(subject=subject))
    return scrub_jobs(subject)


def forget_user(user_id):
    """A user is being deleted: the same for every job record they enqueued (the records stay,
    with `user` set to NULL, for operators)."""
    jobs = Job.objects.filter(user_id=user_id)
    _cancel_waiting_content_jobs(jobs)
    return _scrub(jobs)


def scrub_jobs(subject):
    """Erase the user content that job records about `subject` carry in their data.

    Ids, types, times, statuses and error classes stay for operators. Retention bounds how many
    finished records there are, so this touches few rows.
    """
    return _scrub(Job.objects.filter(subject=subject))


def _scrub(jobs):
    scrubbed = []
    for job in jobs.only("id", "job_type", "data"):
        kind = registry.find(job.job_type)
        if kind and any(f in job.data for f in kind.content_fields):
            job.data = kind.without_content(job.data)
            scrubbed.append(job)
    Job.objects.bulk_update(scrubbed, ["data"], batch_size=500)
    return len(scrubbed)
