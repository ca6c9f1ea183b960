"""Writes on jobs: enqueue one or many, retry failed ones."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from queues.conf import conf
from queues.core import history, registry, uniqueness
from queues.engine import engine
from queues.errors import JobValidationError, TooManyLiveJobs, is_seconds
from queues.execution import tracing
from queues.models import Job, JobEvent

if TYPE_CHECKING:
    from queues.core.registry import JobType

logger = logging.getLogger("queues.services")


@transaction.atomic
def enqueue_for_client(
    user: Any,
    queue: str,
    job_type: str,
    data: dict[str, Any],
    *,
    request_id: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
) -> Job:
    """`enqueue` on behalf of an API client: only declared types, and a cap on live jobs."""
    _admit_client_jobs(user, queue, job_type, 1, priority)
    data = {**data, "user_id": user.pk}
    return enqueue(job_type, data, request_id=request_id, priority=priority, delay=delay)


@transaction.atomic
def enqueue_many_for_client(
    user: Any,
    queue: str,
    job_type: str,
    items: list[dict[str, Any]],
    *,
    request_id: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
) -> list[Job]:
    """`enqueue_many` on behalf of an API client, each item counting towards the cap."""
    _admit_client_jobs(user, queue, job_type, len(items), priority)
    items = [{**data, "user_id": user.pk} if isinstance(data, dict) else data for data in items]
    return enqueue_many(job_type, items, request_id=request_id, priority=priority, delay=delay)


def _admit_client_jobs(user, queue, job_type, count, priority):
    """Refuse `count` more jobs of a client: types it may not enqueue, a priority more urgent
    than its type's (a client may only let its own jobs wait), or more live jobs than its cap.

    The user's row is locked while counting, so concurrent requests of one user cannot all pass
    the cap together; other users never wait on it.
    """
    kind = registry.get(queue, job_type, client=True)
    if priority is not None and priority < kind.priority:
        raise JobValidationError(
            f"priority must be at least {kind.priority} for {job_type}",
            {"priority": [f"Must be at least {kind.priority} for {job_type}."]},
        )
    get_user_model().objects.select_for_update().filter(pk=user.pk).exists()
    cap = conf.CLIENT_LIVE_JOBS_PER_USER
    client_types = [name for name, t in registry.all_types().items() if t.client_enqueueable]
    live = Job.objects.filter(user=user, status__in=Job.LIVE, job_type__in=client_types)
    if live.count() + count > cap:
        raise TooManyLiveJobs(f"{cap} of your jobs are still waiting or running")


# What `enqueue`, `enqueue_if` and `enqueue_many` take besides the data: each overrides the type's
# (docs/job-queue.md, "Job options").
OPTIONS = ("priority", "delay", "run_after", "timeout", "max_attempts", "backoff_seconds")
# The most attempts one job may be given.
MAX_ATTEMPTS = 1000


def enqueue(
    job_type: str,
    data: dict[str, Any],
    *,
    request_id: str | None = None,
    user_checked: bool = False,
    priority: int | None = None,
    delay: float | timedelta | None = None,
    run_after: datetime | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    backoff_seconds: float | None = None,
) -> Job:
    """Validate and store a job of `job_type` on its queue, in the caller's transaction.

    `data` carries `user_id` (optional only for types whose schema says so, e.g.
    `UserlessJobData`). `request_id`: what asked for the job (the caller's request id; a new one
    when it has none), unless `data` carries one. `user_checked`: the caller read `user_id` from a
    row whose foreign key vouches for the user, so validation does not look the user up.

    Options, each the type's when not given: `priority` (0 first, to 9); `delay` (seconds or a
    timedelta) or `run_after` (an aware datetime) defers the first attempt; `timeout` (seconds
    an attempt may run, at most the queue's); `max_attempts` (runs in all); `backoff_seconds`
    (the retry backoff's base). An unknown type, data that does not fit its schema, or a bad
    option raise `JobValidationError` (its `fields` name the option) and store nothing. Returns
    the `Job`; for a unique type's duplicate, the job already holding its key (`job.deduplicated`
    is set).
    """
    kind = _kind(job_type)
    options = job_options(
        kind,
        priority=priority,
        delay=delay,
        run_after=run_after,
        timeout=timeout,
        max_attempts=max_attempts,
        backoff_seconds=backoff_seconds,
    )
    job = _new_job(kind, data, request_id, user_checked, options)
    return engine().store_job(kind, job)


def enqueue_slot(job_type: str, data: dict[str, Any], *, periodic: str, slot: datetime) -> Job:
    """`enqueue` the job the periodic declaration `periodic` (its name) fires for the time slot
    starting at `slot` (`queues.core.periodic`): keyed by both, in every status, so clusters
    firing one slot store one job; the others get that one (`deduplicated` set)."""
    kind = _kind(job_type)
    request_id = f"periodic:{slot.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    job = _new_job(kind, data, request_id, False, job_options(kind))
    job.unique_key = uniqueness.slot_key(kind.name, periodic, slot)
    job.unique_states = uniqueness.ALL_STATES
    return engine().store(kind, [job])[0]


def enqueue_if(
    update: QuerySet,
    values: dict[str, Any],
    job_type: str,
    data: dict[str, Any],
    *,
    request_id: str | None = None,
    user_checked: bool = False,
    **options: Any,
) -> Job | None:
    """`enqueue` only if `update.update(**values)` changes a row, atomically with that change.

    `update` selects at most one row: typically the change that asks for the job, filtered so
    it matches only while the job is wanted. Returns the job (or its unique key's holder, with
    `deduplicated` set), or None when no row matched and nothing is stored. The data and
    `options` (`enqueue`'s) are validated first: invalid ones raise before anything changes. On
    PostgreSQL with the broker in the database the change and the job are one statement, so the
    caller needs no transaction (and pays no BEGIN and COMMIT round trips); elsewhere they share
    one.
    """
    kind = _kind(job_type)
    job = _new_job(kind, data, request_id, user_checked, job_options(kind, **options))
    return engine().store_if(kind, job, update, values)


def enqueue_many(
    job_type: str,
    items: list[dict[str, Any]],
    *,
    request_id: str | None = None,
    user_checked: bool = False,
    **options: Any,
) -> list[Job]:
    """`enqueue` for a list of data, in one statement on PostgreSQL: all or nothing.

    `options` (`enqueue`'s) apply to every job. Any invalid item raises `JobValidationError`
    naming its index, and stores nothing. Returns the jobs in the order of `items` (a unique
    type's duplicates as in `enqueue`).
    """
    kind = _kind(job_type)
    if not isinstance(items, list) or not items:
        raise JobValidationError(f"{job_type}: items must be a non-empty list")
    chosen = job_options(kind, **options)
    # The items' users are looked up in one query, not once per item; an unknown one is left
    # to the item's validation, which names it.
    user_ids = {data.get("user_id") for data in items if isinstance(data, dict)}
    ids = [pk for pk in user_ids if type(pk) is int and 0 < pk < 2**63] if not user_checked else []
    users = get_user_model().objects.filter(pk__in=ids)
    known = set(users.values_list("pk", flat=True)) if ids else set()
    jobs = []
    for index, data in enumerate(items):
        checked = user_checked or (isinstance(data, dict) and data.get("user_id") in known)
        try:
            jobs.append(_new_job(kind, data, request_id, checked, chosen))
        except (JobValidationError, TypeError) as exc:
            fields = getattr(exc, "fields", None) or [str(exc)]
            raise JobValidationError(f"item {index}: {exc}", {index: fields}) from None
    return engine().store(kind, jobs)


def _kind(job_type: str) -> JobType:
    """The registered type `job_type`, or JobValidationError."""
    kind = registry.find(job_type)
    if kind is None:
        raise JobValidationError(f"unknown job type {job_type!r}")
    return kind


def _invalid_option(name: str, problem: str) -> JobValidationError:
    return JobValidationError(
        f"{name} {problem}", {name: [f"Must be {problem.removeprefix('must be ')}."]}
    )


def job_options(
    kind: JobType,
    *,
    priority: int | None = None,
    delay: float | timedelta | None = None,
    run_after: datetime | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    backoff_seconds: float | None = None,
) -> dict[str, Any]:
    """The `Job` fields the options of an enqueue set, each the type's unless given; a bad one
    raises `JobValidationError` naming it. `run_after` is None for "now, at the store"."""
    if priority is None:
        priority = kind.priority
    elif type(priority) is not int or priority not in registry.PRIORITIES:
        raise _invalid_option("priority", f"must be an integer from 0 to {registry.PRIORITIES[-1]}")
    if delay is not None and run_after is not None:
        raise _invalid_option("delay", "must be left out when run_after is given")
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if delay is not None and not is_seconds(delay):
        raise _invalid_option("delay", "must be a number of seconds, at least 0")
    if run_after is not None and (
        not isinstance(run_after, datetime) or timezone.is_naive(run_after)
    ):
        raise _invalid_option("run_after", "must be an aware datetime")
    if run_after is None and (delay if delay is not None else kind.delay):
        try:
            run_after = timezone.now() + timedelta(seconds=delay or kind.delay)
        except OverflowError:
            raise _invalid_option("delay", "must be a number of seconds in reach") from None
    if timeout is not None and (problem := registry.timeout_problem(timeout, kind.queue)):
        raise _invalid_option("timeout", problem)
    if max_attempts is None:
        max_attempts = kind.retry_policy.attempts
    elif type(max_attempts) is not int or not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise _invalid_option("max_attempts", f"must be an integer from 1 to {MAX_ATTEMPTS}")
    if backoff_seconds is not None and not is_seconds(backoff_seconds):
        raise _invalid_option("backoff_seconds", "must be a number of seconds, at least 0")
    return {
        "priority": priority,
        "run_after": run_after,
        "timeout": None if timeout is None else float(timeout),
        "max_attempts": max_attempts,
        "backoff_seconds": None if backoff_seconds is None else float(backoff_seconds),
    }


def _new_job(
    kind: JobType,
    data: dict[str, Any],
    request_id: str | None,
    user_checked: bool,
    options: dict[str, Any],
) -> Job:
    """An unsaved Job of `kind` with validated `data` and `options` (`job_options`), or
    JobValidationError."""
    data = {**data}
    data.setdefault("request_id", request_id or uuid.uuid4().hex)
    cleaned = dict(kind.validate(data, user_checked=user_checked))
    return Job(
        queue=kind.queue,
        job_type=kind.name,
        data=cleaned,
        subject=kind.subject_of(cleaned),
        user_id=cleaned.get("user_id"),
        request_id=cleaned["request_id"],
        trace_context=tracing.capture(),
        **{**options, "run_after": options["run_after"] or timezone.now()},
    )


@transaction.atomic
def retry_jobs(jobs: QuerySet, *, by: Any = None, detail: str = "") -> int:
    """Send failed jobs back to their queue with a fresh attempt budget. Returns how many.
    `detail` goes into each job's history (e.g. which command did it).

    A fresh start: a stop asked of an earlier attempt (`cancel_requested_at`) no longer stands,
    so the new attempt's checks do not stop it; the job's history keeps the request.
    A unique type's job whose key another live job holds now is left failed, not counted."""
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
        job.cancel_requested_by = job.cancel_requested_at = None
        if not engine().store_retry(job):  # a newer job holds its unique key: that one stays
            continue
        history.record([job], JobEvent.Action.RETRIED, by=by, detail=detail)
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


@transaction.atomic(savepoint=False)
def cancel_waiting_jobs(subject: str, job_type: str) -> int:
    """Withdraw the not-yet-started jobs of `job_type` about `subject`, with their counters, in
    one transaction (the caller's, if open). Returns how many.

    Their broker rows stay; the runner skips a delivery of a finished job.
    """
    jobs = Job.objects.filter(subject=subject, job_type=job_type)
    return engine().cancel_waiting(jobs, registry.find(job_type).queue, job_type)


def _cancel_waiting_content_jobs(jobs: QuerySet) -> None:
    """Withdraw those of `jobs` that wait and carry user content (they could only fail)."""
    waiting = jobs.filter(status__in=Job.WAITING, job_type__in=registry.types_with_content())
    for queue, job_type in set(waiting.values_list("queue", "job_type")):
        engine().cancel_waiting(jobs.filter(queue=queue, job_type=job_type), queue, job_type)


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
    """Erase the user content that job records about `subject` carry in their data (and
    output, for a type whose output is content).

    Ids, types, times, statuses and error classes stay for operators. Retention bounds how many
    finished records there are, so this touches few rows.
    """
    return _scrub(Job.objects.filter(subject=subject))


def drop_content(jobs):
    """Erase the user content of `jobs` whatever they are about: for jobs that will never run,
    whose content nothing will ever use (cancelled ones). Returns how many were changed."""
    return _scrub(jobs)


def _scrub(jobs):
    scrubbed = []
    for job in jobs.only("id", "job_type", "data", "result", "last_error", "traceback"):
        kind = registry.find(job.job_type)
        output = kind and kind.output_is_content and (job.result, job.last_error, job.traceback)
        if kind and (any(output or ()) or any(f in job.data for f in kind.content_fields)):
            job.data = kind.without_content(job.data)
            if kind.output_is_content:
                job.result, job.last_error, job.traceback = None, "", ""
            scrubbed.append(job)
    Job.objects.bulk_update(scrubbed, ["data", "result", "last_error", "traceback"], batch_size=500)
    return len(scrubbed)
