"""Job types, registered in one place: each with its queue, handler, data schema, retry policy,
priority, timeout, delay and uniqueness.

Apps register their types in a `jobs` module (`chat/jobs.py`), found at startup like admin
modules are; `settings.JOB_TYPE_MODULES` names extra ones.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from importlib import import_module
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.utils.module_loading import autodiscover_modules, import_string

from queues.conf import conf
from queues.errors import PERMANENT, JobValidationError, WorkerLost, is_seconds, is_transient
from queues.execution import handlers

if TYPE_CHECKING:
    from queues.core.schemas import JobData
    from queues.models import Job

# A job type's handler: called with (data), (data, job) or (job) (`queues.execution.handlers`),
# returning a JSON-serializable result.
Handler = TypeVar("Handler", bound=Callable[..., Any])


# Error classes a policy names: classes, or dotted paths to them (as settings give them).
ErrorClasses = type[BaseException] | str | Sequence[type[BaseException] | str]
Errors = tuple[type[BaseException], ...]
# The longest exponent of the backoff: beyond it the cap applies anyway.
_MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class RetryPolicy:
    """How often a job type's attempts run and which failures earn another one.

    `attempts` runs in all. A failed attempt is retried while attempts are left unless its error
    is permanent (`PermanentJobError`, `SubjectGone`, `JobValidationError`) or an instance of
    `dont_autoretry_for`; otherwise when it is an instance of `autoretry_for` (by default any
    `Exception`, as Oban and Sidekiq do) or one of the queue's transient errors (database
    connection lost, `JobTimeout`, `WorkerLost`). The n-th failure waits
    `backoff_seconds * 2**(n-1)`, at most `max_backoff_seconds`, spread by ± `jitter` (a
    fraction). Names as Celery's task options (`autoretry_for`, `dont_autoretry_for`); error
    classes may be given as dotted paths. Defaults: docs/job-queue.md, "Retries and backoff".
    """

    attempts: int = 3  # a run and two retries
    backoff_seconds: float = 2.0
    jitter: float = 0.1  # ±10%, as Oban's default backoff
    max_backoff_seconds: float = 600.0  # Celery's `retry_backoff_max`
    autoretry_for: ErrorClasses = (Exception,)
    dont_autoretry_for: ErrorClasses = ()

    def __post_init__(self) -> None:
        for name in ("autoretry_for", "dont_autoretry_for"):
            object.__setattr__(self, name, _error_classes(name, getattr(self, name)))
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"attempts must be a whole number, not {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        for name in ("backoff_seconds", "max_backoff_seconds", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number of at least 0, not {value!r}")
        if self.jitter > 1:
            raise ValueError(f"jitter is a fraction of the delay, at most 1, not {self.jitter}")

    def retries(self, exc: BaseException) -> bool:
        """Whether a failure with `exc` earns another attempt (if one is left)."""
        # Tuples of classes once `__post_init__` has run.
        retried, not_retried = cast(
            tuple[Errors, Errors], (self.autoretry_for, self.dont_autoretry_for)
        )
        if isinstance(exc, PERMANENT):
            return False
        if isinstance(exc, WorkerLost):  # not the handler's error: counted, like every attempt
            return True
        if isinstance(exc, not_retried):
            return False
        return isinstance(exc, retried) or is_transient(exc)

    def delay_after(self, failed_attempt: int) -> float:
        doublings = min(max(failed_attempt - 1, 0), _MAX_DOUBLINGS)
        delay = min(self.backoff_seconds * 2**doublings, self.max_backoff_seconds)
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(delay, 0.0)


def _error_classes(name: str, given: ErrorClasses) -> Errors:
    """`given` as a tuple of exception classes, importing dotted paths; ValueError if any is not
    an exception class."""
    items = [given] if isinstance(given, str | type) else list(given)
    classes = []
    for item in items:
        if isinstance(item, str):
            try:
                item = import_string(item)
            except ImportError as exc:
                raise ValueError(f"{name}: {item!r} cannot be imported ({exc})") from None
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"{name}: {item!r} is not an exception class")
        classes.append(item)
    return tuple(classes)


# Statuses a job passes through by itself, each with the statuses it can come from (the
# operator's retry, failed -> queued, is checked where it happens, `services.retry_jobs`).
_COMES_FROM: dict[str, tuple[str, ...]] = {
    "queued": (),
    "running": ("queued", "retrying"),
    "retrying": ("running",),
    "succeeded": ("running",),
    "failed": ("queued", "running", "retrying"),
    "cancelled": ("queued", "running", "retrying"),
}
PRIORITIES = range(10)  # 0 is claimed first (docs/job-queue.md, "Priorities")


@dataclass(frozen=True)
class Unique:
    """At most one job of the type per value of `fields` (in its data) among the jobs whose
    status is in `states`; enqueueing another returns that one (docs/job-queue.md, "Unique jobs").

    `states` must hold every status a job can reach them from on its own (e.g. with `running`,
    also `queued` and `retrying`): the database refuses a second job entering them, and no
    worker could act on that refusal. Default: the live ones; with a `period`, every status.

    `period`: the key holds within one window of that length (windows aligned on the Unix epoch,
    e.g. 10 minutes: 12:00-12:10), so at most one job per key and window; `fields` may then be
    empty (one job of the type per window). `on_conflict="replace"`: a duplicate enqueued while
    the holder still waits (queued or retrying) gives it its data; a running or finished holder
    is returned as it is.
    """

    fields: tuple[str, ...] | list[str]  # stored as a tuple
    states: tuple[str, ...] | list[str] | None = None  # stored as a tuple
    period: timedelta | None = None
    on_conflict: str = "keep"  # or "replace"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        states = self.states
        if states is None:
            states = tuple(_COMES_FROM) if self.period else ("queued", "running", "retrying")
        object.__setattr__(self, "states", tuple(states))
        unknown = set(states) - set(_COMES_FROM)
        if unknown or not (self.fields or self.period) or not states:
            raise ValueError(f"unique jobs need fields (or a period) and known states, not {self}")
        for state in states:
            missing = set(_COMES_FROM[state]) - set(states)
            if missing:
                raise ValueError(f"unique in {state!r} needs {sorted(missing)} too")
        if self.period is not None and (
            not isinstance(self.period, timedelta) or self.period < timedelta(seconds=1)
        ):
            raise ValueError(f"a unique period must be a timedelta of a second or more: {self}")
        if self.on_conflict not in ("keep", "replace"):
            raise ValueError(f"on_conflict must be 'keep' or 'replace', not {self.on_conflict!r}")

    @property
    def replaces(self) -> bool:
        return self.on_conflict == "replace"


@dataclass(frozen=True)
class JobType:
    name: str
    queue: str
    handler: Callable[..., Any]  # (data), (data, job) or (job) -> JSON-serializable result
    schema: type[JobData]  # the serializer class validating the job's data
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    subject: Callable[[dict[str, Any], Any], str | None] | None = None  # -> "kind:id"
    # Data fields holding user content (titles, messages): erased by `scrub_jobs`, and shown to
    # the job's owner only.
    content_fields: tuple[str, ...] = ()
    # Whether the handler's output, its return value (`Job.result`) and its errors' text
    # (`last_error`, `traceback`), may hold user content too (a django.tasks task returns and
    # raises whatever it likes): then it is shown and erased like them; the error class stays.
    output_is_content: bool = False
    # Whether `POST /api/queues/jobs` takes this type. Others are enqueued by the app itself
    # (deletion goes through `DELETE`), and their broker rows are claimed before clients' ones.
    client_enqueueable: bool = False
    # Claimed before waiting jobs of a higher number, within the anti-starvation share.
    priority: int = 0
    unique: Unique | None = None
    # callable(data) -> the broker row's claim rank, replacing the one from `priority`
    # (django.tasks' own priorities: queues.extras.task_backend), or None.
    rank: Callable[[dict[str, Any]], int] | None = None
    # Seconds an attempt may run; None: its queue's `timeout`, which is also the most it may be
    # (the queue's timeout sets its workers' guard and redelivery: docs/job-queue.md, "Timeouts").
    timeout: float | None = None
    # Seconds from enqueue to a job's first run, unless the enqueue says otherwise.
    delay: float = 0.0

    def broker_rank(self, job: Job) -> int:
        """Lower is claimed first: the job's priority, and within one priority the app's own jobs
        before client-enqueued ones (docs/job-queue.md, "Fair share" and "Priorities")."""
        if self.rank is not None:
            return self.rank(job.data)
        return 2 * job.priority + (1 if self.client_enqueueable else 0)

    def without_content(self, data: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k not in self.content_fields}

    def redacted(self, data: dict[str, Any]) -> dict[str, Any]:
        """`data` with each content field replaced by its size, e.g. "[1,204 chars]"."""
        return {
            k: f"[{len(v if isinstance(v, str) else json.dumps(v)):,} chars]"
            if k in self.content_fields
            else v
            for k, v in data.items()
        }

    def redacted_output(self, value: Any) -> Any:
        """A result or error text as anyone but the job's owner may see it: its size, if the
        type's output is content (and there is one)."""
        if not self.output_is_content or value in (None, ""):
            return value
        return f"[{len(value if isinstance(value, str) else json.dumps(value)):,} chars]"

    def subject_of(self, data: dict[str, Any], result: Any = None) -> str:
        return self.subject(data, result) or "" if self.subject else ""

    @property
    def retry_policy(self) -> RetryPolicy:
        """The registered policy with `settings.JOB_RETRY_POLICIES[name]` applied over it."""
        overrides = conf.JOB_RETRY_POLICIES.get(self.name)
        return replace(self.retry, **overrides) if overrides else self.retry

    def validate(self, data: object, *, user_checked: bool = False) -> dict[str, Any]:
        """The cleaned data, or JobValidationError naming every problem."""
        if not isinstance(data, dict):
            raise JobValidationError(f"{self.name}: data must be an object")
        serializer = self.schema(data=data, context={"user_checked": user_checked})
        if not serializer.is_valid():
            problems = "; ".join(
                f"{name}: {' '.join(str(m) for m in messages)}"
                for name, messages in serializer.errors.items()
            )
            raise JobValidationError(f"{self.name}: invalid data ({problems})", serializer.errors)
        return serializer.validated_data


_types: dict[str, JobType] = {}


def register(
    name: str,
    *,
    queue: str,
    schema: type[JobData],
    retry: RetryPolicy | None = None,
    subject: Callable[[dict[str, Any], Any], str | None] | None = None,
    content_fields: Sequence[str] = (),
    client_enqueueable: bool = False,
    priority: int = 0,
    unique: Unique | None = None,
    rank: Callable[[dict[str, Any]], int] | None = None,
    output_is_content: bool = False,
    timeout: float | None = None,
    delay: float = 0.0,
) -> Callable[[Handler], Handler]:
    """Decorator registering `handler` as job type `name` (parameters: `execution.handlers`)."""

    def decorator(handler: Handler) -> Handler:
        handlers.wants(handler)  # a handler that fits no calling convention fails here, not later
        if name in _types:
            raise ValueError(f"job type {name!r} is already registered")
        if queue not in conf.QUEUES:
            raise ValueError(f"job type {name!r} names unknown queue {queue!r}")
        if priority not in PRIORITIES:
            raise ValueError(f"job type {name!r}: priority must be in {PRIORITIES}")
        if unique is not None and set(unique.fields) - set(schema().fields):
            raise ValueError(f"job type {name!r}: unique fields {unique.fields} not in its data")
        if timeout is not None and (problem := timeout_problem(timeout, queue)):
            raise ValueError(f"job type {name!r}: timeout {problem}")
        if not is_seconds(delay):
            raise ValueError(f"job type {name!r}: delay must be a number of seconds, at least 0")
        _types[name] = JobType(
            name,
            queue,
            handler,
            schema,
            retry or RetryPolicy(),
            subject,
            tuple(content_fields),
            bool(output_is_content),
            client_enqueueable,
            priority,
            unique,
            rank,
            timeout=timeout,
            delay=delay,
        )
        return handler

    return decorator


def timeout_problem(timeout: object, queue: str) -> str:
    """What is wrong with `timeout` as the timeout of a job of `queue` ("" if nothing): more than
    0 seconds, and at most the queue's timeout."""
    most = conf.QUEUES[queue]["timeout"]
    if not is_seconds(timeout) or not timeout:
        return "must be a number of seconds, more than 0"
    if timeout > most:
        return f"must be at most its queue's timeout, {most}s"
    return ""


def get(queue: str, name: str, *, client: bool = False) -> JobType:
    """The registered type `name` on `queue`, or JobValidationError.

    With `client`, a type clients may not enqueue is unknown too, with the same message.
    """
    if queue not in conf.QUEUES:
        raise JobValidationError(f"unknown queue {queue!r}")
    job_type = _types.get(name)
    if job_type is None or job_type.queue != queue or (client and not job_type.client_enqueueable):
        raise JobValidationError(f"unknown job type {name!r} on queue {queue!r}")
    return job_type


def find(name: str) -> JobType | None:
    return _types.get(name)


def all_types() -> dict[str, JobType]:
    return dict(_types)


def types_with_content() -> list[str]:
    """Names of the types whose data carries user content (`content_fields`)."""
    return [name for name, kind in _types.items() if kind.content_fields]


def autodiscover() -> None:
    autodiscover_modules("jobs")
    for module in conf.JOB_TYPE_MODULES:
        import_module(module)
