"""Writes on jobs: enqueue one, retry failed ones."""

from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import F
from django.utils import timezone

from queues import counters, registry, selectors
from queues.broker import push, push_statement
from queues.models import Job
from queues.statements import insert_statement
from slimy import log_context
from slimy.request_id import new_request_id


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
    )
    with transaction.atomic(savepoint=False):
        # Broker row first: its RETURNING sends the NOTIFY. Record, row and counters go in one
        # round trip on PostgreSQL.
        broker_row = push_statement(job)
        counters.job_enqueued(job, also=[s for s in (broker_row, insert_statement(job)) if s])
        if broker_row is None:
            push(job)
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
        job.save()
        job.refresh_from_db(fields=["max_attempts"])
        counters.retried_by_operator(job)
        push(job)
        count += 1
    return count


def cancel_waiting_jobs(subject, job_type):
    """Withdraw the not-yet-started jobs of `job_type` about `subject`. Returns how many.

    Their broker rows stay; the runner skips a delivery of a finished job.
    """
    cancelled = Job.objects.filter(
        subject=subject, job_type=job_type, status__in=Job.WAITING
    ).update(status=Job.Status.CANCELLED, finished_at=timezone.now())
    counters.jobs_cancelled(registry.find(job_type).queue, job_type, cancelled)
    return cancelled


def scrub_jobs(subject):
    """Erase the user content that job records about `subject` carry in their data.

    Ids, types, times, statuses and error classes stay for operators. Retention bounds how many
    finished records there are, so this touches few rows.
    """
    scrubbed = []
    for job in selectors.jobs_with_content(subject).only("id", "job_type", "data"):
        kind = registry.find(job.job_type)
        fields = [f for f in (kind.content_fields if kind else ()) if f in job.data]
        if fields:
            job.data = {k: v for k, v in job.data.items() if k not in fields}
            scrubbed.append(job)
    Job.objects.bulk_update(scrubbed, ["data"], batch_size=500)
    return len(scrubbed)
