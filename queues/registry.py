"""Job types, registered in one place: each with its queue, handler, data schema and retry policy.

Apps register their types in a `jobs` module (`chat/jobs.py`), found at startup like admin
modules are; `settings.JOB_TYPE_MODULES` names extra ones.
"""

import json
import random
from dataclasses import dataclass, field
from importlib import import_module

from django.utils.module_loading import autodiscover_modules

from queues import handlers
from queues.conf import conf
from queues.errors import JobValidationError


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` runs in all; the n-th failure waits `backoff_seconds * 2**(n-1)` (± jitter)."""

    attempts: int = 3
    backoff_seconds: float = 2.0
    jitter: float = 0.0  # a fraction: 0.1 spreads each delay by ±10%

    def delay_after(self, failed_attempt):
        delay = self.backoff_seconds * 2 ** (failed_attempt - 1)
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(delay, 0.0)


@dataclass(frozen=True)
class JobType:
    name: str
    queue: str
    handler: object  # callable(data), (data, job) or (job) -> JSON-serializable result
    schema: type  # a DRF Serializer class validating the job's data
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    subject: object = None  # callable(data, result) -> "kind:id", or None
    # Data fields holding user content (titles, messages): erased by `scrub_jobs`, and shown to
    # the job's owner only.
    content_fields: tuple = ()
    # Whether `POST /api/queues/jobs` takes this type. Others are enqueued by the app itself
    # (deletion goes through `DELETE`), and their broker rows are claimed before clients' ones.
    client_enqueueable: bool = False
    # callable(data) -> the broker row's claim rank (lower is claimed first), or None: the app's
    # own types rank 0, client-enqueueable ones 1 (docs/job-queue.md, "Fair share").
    priority: object = None

    def broker_priority(self, data):
        if self.priority is not None:
            return self.priority(data)
        return 1 if self.client_enqueueable else 0

    def without_content(self, data):
        return {k: v for k, v in data.items() if k not in self.content_fields}

    def redacted(self, data):
        """`data` with each content field replaced by its size, e.g. "[1,204 chars]"."""
        return {
            k: f"[{len(v if isinstance(v, str) else json.dumps(v)):,} chars]"
            if k in self.content_fields
            else v
            for k, v in data.items()
        }

    def subject_of(self, data, result=None):
        return self.subject(data, result) or "" if self.subject else ""

    @property
    def retry_policy(self):
        """The registered policy with `settings.JOB_RETRY_POLICIES[name]` applied over it."""
        overrides = conf.JOB_RETRY_POLICIES.get(self.name, {})
        return RetryPolicy(**{**self.retry.__dict__, **overrides})

    def validate(self, data, *, user_checked=False):
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


_types = {}


def register(
    name,
    *,
    queue,
    schema,
    retry=None,
    subject=None,
    content_fields=(),
    client_enqueueable=False,
    priority=None,
):
    """Decorator registering `handler` as job type `name` (its parameters: `queues.handlers`)."""

    def decorator(handler):
        handlers.wants(handler)  # a handler that fits no calling convention fails here, not later
        if name in _types:
            raise ValueError(f"job type {name!r} is already registered")
        if queue not in conf.QUEUES:
            raise ValueError(f"job type {name!r} names unknown queue {queue!r}")
        _types[name] = JobType(
            name,
            queue,
            handler,
            schema,
            retry or RetryPolicy(),
            subject,
            tuple(content_fields),
            client_enqueueable,
            priority,
        )
        return handler

    return decorator


def get(queue, name, *, client=False):
    """The registered type `name` on `queue`, or JobValidationError.

    With `client`, a type clients may not enqueue is unknown too, with the same message.
    """
    if queue not in conf.QUEUES:
        raise JobValidationError(f"unknown queue {queue!r}")
    job_type = _types.get(name)
    if job_type is None or job_type.queue != queue or (client and not job_type.client_enqueueable):
        raise JobValidationError(f"unknown job type {name!r} on queue {queue!r}")
    return job_type


def find(name):
    return _types.get(name)


def all_types():
    return dict(_types)


def types_with_content():
    """Names of the types whose data carries user content (`content_fields`)."""
    return [name for name, kind in _types.items() if kind.content_fields]


def autodiscover():
    autodiscover_modules("jobs")
    for module in conf.JOB_TYPE_MODULES:
        import_module(module)
