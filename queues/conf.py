"""The queues app's own settings, each with a default: a project that adds `queues` to
`INSTALLED_APPS` and sets none of them gets a working queue (docs/settings.md).

Every read in `queues` goes through `conf`, in the spirit of DRF's `api_settings`: `conf.NAME` is
`settings.NAME` or its default, cached until a setting changes (`override_settings`). The project
reads the environment (`slimy/settings.py`); bad values are reported by `queues.checks`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Options every queue starts from: worker processes, and seconds a handler may run before it
    # is cut off and retried.
    "QUEUE_DEFAULTS": {"workers": 4, "timeout": 120},
    # Queue name -> options over QUEUE_DEFAULTS. `qcluster` serves each with its own workers
    # (queues.django_q2.cluster).
    "QUEUES": {"database": {}},
    # The queue of job types that name none (queues' demo job, django.tasks' "default" queue).
    "DEFAULT_QUEUE": "database",
    # Job type name -> fields of its RetryPolicy to override (error classes as dotted paths).
    "JOB_RETRY_POLICIES": {},
    # Modules that register job types, besides every installed app's `jobs` module.
    "JOB_TYPE_MODULES": [],
    # Finished job records kept per queue, user and status; older ones are pruned.
    "JOB_RETENTION": {"succeeded": 50, "failed": 100, "cancelled": 50},
    # Status -> how long a finished record is kept at most (a timedelta, or seconds; None: no
    # limit), beside the counts above.
    "JOB_RETENTION_MAX_AGE": {},
    # Job type -> {"count": {status: n}, "max_age": {status: age}} over the two above; a type
    # with its own counts is counted apart from the other types.
    "JOB_RETENTION_BY_TYPE": {},
    # Live jobs of client-enqueueable types a user may have; one more gets a 429.
    "CLIENT_LIVE_JOBS_PER_USER": 100,
    # Seconds after a job's timeout before its broker row is handed out again when its worker
    # died silently (django-q2's visibility timeout is `timeout + grace`).
    "QUEUE_REDELIVERY_GRACE": 30,
    # Seconds between rescue passes of a cluster (queues.maintenance.rescuer).
    "QUEUE_RESCUE_INTERVAL": 5,
    # Seconds past due after which a waiting job whose broker row was claimed but never begun
    # (on Redis: any waiting job) is pushed again. One whose row is gone: at the next pass.
    "QUEUE_STRANDED_AFTER": 45,
    # Periodic jobs declared in settings (queues.core.periodic), besides `every=`/`cron=` beside
    # handlers, e.g. [{"job_type": "send_digest", "data": {"kind": "daily"}, "cron": "0 8 * * *"}].
    "QUEUE_SCHEDULES": [],
    # Whether the statements a job sends for every attempt (`hot_cursor`) are prepared on their
    # connection. Off for a process whose database connection goes through a transaction-mode
    # pooler (PgBouncer), where a prepared statement lives on a server connection the next
    # transaction may not get. Workers refuse to start with it off (docs/deployment.md).
    "QUEUE_PREPARED_STATEMENTS": True,
    # Niceness `qcluster` adds to itself before starting its processes (0 to 19; `--nice` on
    # the command line wins): on a host it shares with the web tier, the workers then take the
    # CPU the web's requests leave, so requests stay fast during a drain (docs/deployment.md).
    "QUEUE_WORKER_NICE": 0,
}

# Jobs a user may enqueue through `POST /api/queues/jobs` when the project's REST_FRAMEWORK
# names no "enqueue" throttle rate.
DEFAULT_ENQUEUE_RATE = "120/minute"


class QueueSettings:
    """`conf.NAME`: the project's setting NAME, or its default (dicts merged over the default's)."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"queues has no setting {name!r}")
        value = getattr(settings, name, DEFAULTS[name])
        if name == "QUEUES" and _all_dicts(value):
            value = {queue: {**self.QUEUE_DEFAULTS, **options} for queue, options in value.items()}
        elif name in {"QUEUE_DEFAULTS", "JOB_RETENTION"} and isinstance(value, dict):
            value = {**DEFAULTS[name], **value}
        self.__dict__[name] = value
        return value

    def reload(self) -> None:
        self.__dict__.clear()


def _all_dicts(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


conf = QueueSettings()


def _setting_changed(setting: str, **kwargs: Any) -> None:
    if setting in DEFAULTS:
        conf.reload()


setting_changed.connect(_setting_changed, dispatch_uid="queues.conf")
