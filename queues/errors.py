"""The queue's errors, and the two kinds of failure every retry policy knows: errors that never
retry (`PERMANENT`) and the queue's own transient ones (`is_transient`), which retry even where a
type narrows `autoretry_for`. Any other error retries or not as the job type's `RetryPolicy`
says (by default it does: `queues.core.registry.RetryPolicy`)."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError


class JobError(Exception):
    """Base class of the queue's own errors."""


class JobValidationError(JobError, ValueError):
    """Raised at enqueue time: unknown queue or type, missing or malformed data. Nothing stored."""

    def __init__(self, message: str, fields: dict[Any, Any] | None = None) -> None:
        super().__init__(message)
        self.fields: dict[Any, Any] = fields or {}


class TooManyLiveJobs(JobError):
    """Raised at enqueue time: the client already has the most live jobs it may have."""

    retry_after = 10  # seconds: a few jobs finish by then on a queue that keeps up


class PermanentJobError(JobError):
    """Retrying cannot help (invalid data, wrong owner): the job fails at once."""


class SubjectGone(PermanentJobError):
    """What the job is about is gone (or is not the user's): it fails at once, and its content
    fields are erased with the failure, since nothing will ever use them."""


class TransientJobError(JobError):
    """Something outside the job went wrong (database unreachable): retry later."""


class JobTimeout(TransientJobError):
    """The handler ran longer than its timeout (its job's, its type's or its queue's)."""


class WorkerLost(TransientJobError):
    """The worker running an attempt died (killed, out of memory) before it finished."""


TRANSIENT = (TransientJobError, OperationalError, InterfaceError)
# Never retried, whatever the policy: retrying cannot help (the job's data, its subject).
PERMANENT = (PermanentJobError, JobValidationError)


def is_transient(exc: BaseException) -> bool:
    """Database trouble, timeouts and lost workers: retried even by a policy that narrows
    `autoretry_for` to the handler's own errors.

    Integrity and data errors are `DatabaseError`s too, but not the database's trouble: the
    policy decides about them like about any error of the handler.
    """
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, DatabaseError) and exc.__class__ is DatabaseError


def is_seconds(value: object) -> bool:
    """Whether `value` is a finite, non-negative number of seconds (not a bool)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


class JobCancelled(JobError):
    """Raised by a handler's check (`queues.execution.cancellation.raise_if_stop_requested`) once a
    stop of its job was requested: the work rolls back and the job is recorded `cancelled`."""


class Snooze(JobError):
    """Raised by a handler (`raise Snooze(seconds)`, or `job.snooze(seconds)`): run this job again
    `seconds` from now, without spending an attempt (Oban's `{:snooze, seconds}`). The attempt's
    work rolls back, as with any exception; the job waits again, `queued`."""

    LONGEST = 365 * 24 * 3600.0

    def __init__(self, seconds: float | timedelta) -> None:
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        if not is_seconds(seconds) or seconds > self.LONGEST:
            raise ValueError(f"snooze takes a number of seconds from 0 to a year, not {seconds!r}")
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = float(seconds)
