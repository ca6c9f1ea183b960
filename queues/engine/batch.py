"""Storing jobs, the part both engines share: unique keys, duplicates and their holders;
operators' retries and the withdrawal of waiting jobs.

A unique type's job is stored only if no job holds its key (`queues.core.uniqueness`); a
duplicate gets the job holding the key instead, with `deduplicated` set. The engines insert
(`PostgreSQLEngine._insert`, `SQLiteEngine._insert`: those of the jobs whose key is free); this
module reads the holders of the others, and tries again should a holder finish meanwhile. No SQL
here: the statements are the engines'.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from queues.core import uniqueness
from queues.engine import counters
from queues.models import Job

if TYPE_CHECKING:
    from queues.core.registry import JobType

# A holder found finishing between the INSERT and the read frees its key: try again, a few times.
ROUNDS = 3


def store(
    kind: JobType,
    jobs: list[Job],
    insert: Callable[[JobType, list[Job]], set[Hashable]],
    replace: Callable[[Job, Job], bool] | None = None,
) -> list[Job]:
    """Store `jobs` (new, validated Job instances of `kind`) in the caller's transaction, with
    `insert` (the engine's: stores those whose unique key is free, returns their ids).

    Returns, in order, each stored job or, for a duplicate, the job holding its unique key, with
    `deduplicated` set. Jobs of one batch with the same key get one job (the first; for a type
    that replaces, with the last one's data). A holder still waiting takes its duplicate's data
    when the type replaces (`Unique(on_conflict="replace")`), through `replace` (the engine's).
    """
    set_unique_key(kind, jobs)
    replaces = kind.unique is not None and kind.unique.replaces
    first: dict[Hashable, Job] = {}
    last: dict[Hashable, Job] = {}
    for job in jobs:
        first.setdefault(job.unique_key or job.pk, job)
        last[job.unique_key or job.pk] = job
    if replaces:
        for key, job in first.items():
            job.data, job.subject = last[key].data, last[key].subject
    held: dict[str, Job] = {}
    pending = list(first.values())
    with transaction.atomic(savepoint=False):
        for _ in range(ROUNDS):
            inserted = insert(kind, pending)
            skipped = [job for job in pending if job.pk not in inserted]
            held.update(holders([job.unique_key for job in skipped]))
            pending = [job for job in skipped if job.unique_key not in held]
            if not pending:
                break
        else:
            raise RuntimeError(f"{kind.name}: holders of {len(pending)} unique keys kept moving")
        if replaces and replace is not None:
            for key, holder in held.items():
                replace_waiting(holder, last[key], replace)
    return [held.get(job.unique_key) or first[job.unique_key or job.pk] for job in jobs]


def store_after_update(
    kind: JobType,
    job: Job,
    update: QuerySet,
    values: dict[str, Any],
    insert: Callable[[JobType, list[Job]], set[Hashable]],
    replace: Callable[[Job, Job], bool] | None = None,
) -> Job | None:
    """`store_if` in two steps, in one transaction: the change, then `store` if it changed a row
    (SQLite, and a broker outside the database, whose push waits for the commit)."""
    with transaction.atomic():
        if not update.update(**values):
            return None
        return store(kind, [job], insert, replace)[0]


def store_retry(job: Job, push: Callable[[Job], int | None]) -> bool:
    """Store a failed `job`, its fields already set for a fresh start, with a new broker row, and
    count the operator's retry; in a savepoint, so that when a newer job holds its unique key
    nothing changes and the answer is False."""
    try:
        with transaction.atomic():
            job.broker_row = push(job)
            job.save()
    except IntegrityError:
        return False
    job.refresh_from_db(fields=["max_attempts"])
    counters.retried_by_operator(job)
    return True


def cancel_waiting(jobs: QuerySet, queue: str, job_type: str) -> int:
    """Cancel those of `jobs` (of `queue` and `job_type`) that wait, with their counters, in the
    caller's transaction; how many. Their broker rows stay: the runner skips a finished job."""
    cancelled = jobs.filter(status__in=Job.WAITING).update(
        status=Job.Status.CANCELLED, finished_at=timezone.now()
    )
    counters.jobs_cancelled(queue, job_type, cancelled)
    return cancelled


def replace_waiting(holder: Job, duplicate: Job, replace: Callable[[Job, Job], bool]) -> None:
    """Give `holder` the data of `duplicate` if it still waits (the engine's `replace` says)."""
    if holder.status in Job.WAITING and replace(holder, duplicate):
        holder.data, holder.subject = duplicate.data, duplicate.subject


def set_unique_key(kind: JobType, jobs: Iterable[Job]) -> None:
    """Give each of `jobs` the unique key and states its type stores it with; a job keyed by its
    caller (a periodic job's slot: `queues.core.periodic`) keeps its own."""
    now = timezone.now()  # one period window for the whole batch
    for job in jobs:
        if job.unique_key:
            continue
        job.unique_key = uniqueness.key_of(kind, job.data, now)
        job.unique_states = uniqueness.states_mask(kind)


def stored(job: Job, broker_row: int | None, push: Callable[[Job], int | None]) -> Job:
    """`job` as `save()` leaves it, knowing its broker row; on a broker outside the database
    (Redis), pushed (after the commit)."""
    job.broker_row = broker_row
    job._state.adding, job._state.db = False, DEFAULT_DB_ALIAS
    if broker_row is None:
        push(job)
    return job


def holders(keys: Iterable[str]) -> dict[str, Job]:
    """{unique key: the job holding it}, among `keys`."""
    keys = [key for key in keys if key]
    if not keys:
        return {}
    jobs = Job.objects.filter(uniqueness.HOLDS_KEY, unique_key__in=keys)
    found = {job.unique_key: job for job in jobs}
    for job in found.values():
        job.deduplicated = True
    return found
