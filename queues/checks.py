"""System checks for the queues app's settings (`manage.py check`; also run by `migrate`,
`runserver` and `qcluster`'s start). Ids: docs/settings.md.

They read the raw settings, not `conf`, so a value of the wrong type is reported rather than
merged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from datetime import timedelta
from importlib import import_module
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.core.checks import register as register_check
from django_tasks.exceptions import InvalidTaskError

from queues.conf import DEFAULTS, conf
from queues.core import periodic, registry
from queues.core.registry import RetryPolicy
from queues.errors import JobValidationError
from queues.maintenance.periodic import retention_age
from queues.models import Job

# Seconds settings that must be whole numbers above zero. QUEUE_REDELIVERY_GRACE may be zero
# (redelivery right at the timeout), not negative.
POSITIVE_SECONDS = ["QUEUE_RESCUE_INTERVAL", "QUEUE_STRANDED_AFTER"]
RETENTION_STATUSES = set(DEFAULTS["JOB_RETENTION"])
RETENTION_RULES = {"count", "max_age"}
QUEUE_OPTIONS = set(DEFAULTS["QUEUE_DEFAULTS"])
SCHEDULE_KEYS = {"name", "job_type", "data", "task", "args", "kwargs", "func"} | {
    "minutes",
    "every",
    "cron",
}
# django-q2's `retry` when Q_CLUSTER sets none.
DJANGO_Q_RETRY = 60


def register() -> None:
    register_check(check_settings, "queues")


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    raw = {name: getattr(settings, name, default) for name, default in DEFAULTS.items()}
    problems = _types(raw)
    if problems:  # the checks below assume the types
        return problems
    return [
        *_positive(raw),
        *_queues_match_clusters(),
        *_stranded_after(raw),
        *_redelivery(),
        *_retry_policies(raw),
        *_retention(raw),
        *_schedules(raw),
    ]


def _types(raw: dict[str, Any]) -> list[CheckMessage]:
    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    expected: dict[str, tuple[Callable[[Any], bool], str]] = {
        "QUEUE_DEFAULTS": (lambda v: isinstance(v, dict), "a dict"),
        "QUEUES": (
            lambda v: isinstance(v, dict) and all(isinstance(o, dict) for o in v.values()),
            "a dict of queue name -> dict of options",
        ),
        "JOB_RETRY_POLICIES": (
            lambda v: isinstance(v, dict) and all(isinstance(o, dict) for o in v.values()),
            "a dict of job type name -> dict of RetryPolicy fields",
        ),
        "JOB_TYPE_MODULES": (
            lambda v: isinstance(v, list | tuple) and all(isinstance(m, str) for m in v),
            "a list of module paths",
        ),
        "JOB_RETENTION": (
            lambda v: isinstance(v, dict) and all(is_int(n) for n in v.values()),
            "a dict of status -> number of records",
        ),
        "JOB_RETENTION_MAX_AGE": (_ages, "a dict of status -> timedelta, seconds or None"),
        "JOB_RETENTION_BY_TYPE": (
            lambda v: (
                isinstance(v, dict)
                and all(
                    isinstance(rules, dict)
                    and isinstance(rules.get("count", {}), dict)
                    and all(is_int(n) for n in rules.get("count", {}).values())
                    and _ages(rules.get("max_age", {}))
                    for rules in v.values()
                )
            ),
            'a dict of job type -> {"count": {status: n}, "max_age": {status: age}}',
        ),
        "CLIENT_LIVE_JOBS_PER_USER": (is_int, "an int"),
        "QUEUE_REDELIVERY_GRACE": (is_int, "an int (seconds)"),
        "QUEUE_RESCUE_INTERVAL": (is_int, "an int (seconds)"),
        "QUEUE_STRANDED_AFTER": (is_int, "an int (seconds)"),
        "QUEUE_SCHEDULES": (
            lambda v: isinstance(v, list | tuple) and all(isinstance(e, dict) for e in v),
            "a list of dicts",
        ),
        "QUEUE_PREPARED_STATEMENTS": (lambda v: isinstance(v, bool), "True or False"),
        "QUEUE_WORKER_NICE": (lambda v: is_int(v) and 0 <= v <= 19, "an int from 0 to 19"),
    }
    return [
        Error(
            f"{name} must be {kind}, not {raw[name]!r}.",
            hint=f"See docs/settings.md; unset, it defaults to {DEFAULTS[name]!r}.",
            id="queues.E001",
        )
        for name, (valid, kind) in expected.items()
        if not valid(raw[name])
    ]


def _positive(raw: dict[str, Any]) -> list[CheckMessage]:
    numbers = {name: raw[name] for name in [*POSITIVE_SECONDS, "CLIENT_LIVE_JOBS_PER_USER"]}
    for queue, options in conf.QUEUES.items():
        for option, value in options.items():
            if option in QUEUE_OPTIONS:
                numbers[f'QUEUES["{queue}"]["{option}"]'] = value
    problems: list[CheckMessage] = [
        Error(
            f"{name} must be a whole number above zero, not {value!r}.",
            hint="Intervals and timeouts are seconds; workers and caps are counts.",
            id="queues.E002",
        )
        for name, value in numbers.items()
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0
    ]
    grace = raw["QUEUE_REDELIVERY_GRACE"]
    if grace < 0:
        problems.append(
            Error(
                f"QUEUE_REDELIVERY_GRACE must be zero or more, not {grace}.",
                hint="Seconds after a job's timeout before its broker row is handed out again.",
                id="queues.E002",
            )
        )
    return problems


def _cluster_names() -> tuple[str, set[str]]:
    """The queue served by `Q_CLUSTER` and those served by its ALT_CLUSTERS."""
    q_cluster = getattr(settings, "Q_CLUSTER", {})
    return q_cluster.get("name", "default"), set(q_cluster.get("ALT_CLUSTERS", {}))


def _queues_match_clusters() -> list[CheckMessage]:
    """Each django-q2 cluster of Q_CLUSTER must be a queue. A queue needs no cluster entry of
    its own: `qcluster` serves every queue, with options derived from its QUEUES entry."""
    main, alternatives = _cluster_names()
    queues = set(conf.QUEUES)
    return [
        Error(
            f"Q_CLUSTER serves queue {name!r}, which is not in QUEUES.",
            hint=f"Name each django-q2 cluster after a queue: one of {sorted(queues)}.",
            id="queues.E003",
        )
        for name in sorted({main, *alternatives} - queues)
    ]


def _stranded_after(raw: dict[str, Any]) -> list[CheckMessage]:
    """A lost delivery is rescued within QUEUE_STRANDED_AFTER + QUEUE_RESCUE_INTERVAL of its due
    time; until then its job must still count as live (Job.OVERDUE_AFTER), or the sweeper would
    take it for lost and enqueue its work again."""
    rescued_within = raw["QUEUE_STRANDED_AFTER"] + raw["QUEUE_RESCUE_INTERVAL"]
    overdue_after = Job.OVERDUE_AFTER.total_seconds()
    if rescued_within < overdue_after:
        return []
    return [
        Error(
            f"QUEUE_STRANDED_AFTER + QUEUE_RESCUE_INTERVAL ({rescued_within} s) must be below "
            f"{overdue_after:.0f} s, after which a waiting job counts as overdue (not live).",
            hint="Lower QUEUE_STRANDED_AFTER (default 45) or QUEUE_RESCUE_INTERVAL (default 5).",
            id="queues.E004",
        )
    ]


def _redelivery() -> list[CheckMessage]:
    """django-q2 hands a claimed broker row out again after `retry` seconds: before the queue's
    timeout + QUEUE_REDELIVERY_GRACE, a job still running would be delivered again."""
    q_cluster = getattr(settings, "Q_CLUSTER", {})
    main, _ = _cluster_names()
    options = {main: q_cluster, **q_cluster.get("ALT_CLUSTERS", {})}
    problems: list[CheckMessage] = []
    for queue, cluster in options.items():
        retry = cluster.get("retry", q_cluster.get("retry", DJANGO_Q_RETRY))
        if queue not in conf.QUEUES or not isinstance(retry, int | float):
            continue
        needed = conf.QUEUES[queue]["timeout"] + conf.QUEUE_REDELIVERY_GRACE
        if retry < needed:
            problems.append(
                Warning(
                    f"Q_CLUSTER retry for queue {queue!r} is {retry} s, below its timeout + "
                    f"QUEUE_REDELIVERY_GRACE ({needed} s): running jobs get spare deliveries.",
                    hint=f'Set "retry" to {needed} for that cluster.',
                    id="queues.W002",
                )
            )
    return problems


def _retry_policies(raw: dict[str, Any]) -> list[CheckMessage]:
    known = {field.name for field in fields(RetryPolicy)}
    problems: list[CheckMessage] = []
    for job_type, overrides in raw["JOB_RETRY_POLICIES"].items():
        for field in sorted(set(overrides) - known):
            problems.append(
                Error(
                    f"JOB_RETRY_POLICIES[{job_type!r}] names unknown field {field!r}.",
                    hint=f"A retry policy has the fields {sorted(known)}.",
                    id="queues.E005",
                )
            )
        kind = registry.find(job_type)
        if not set(overrides) - known:
            try:  # values the policy refuses: an error class that does not import, attempts 0
                replace(kind.retry if kind else RetryPolicy(), **overrides)
            except (TypeError, ValueError) as exc:
                problems.append(
                    Error(
                        f"JOB_RETRY_POLICIES[{job_type!r}] is refused: {exc}.",
                        hint="Error classes are given by dotted path, e.g. "
                        '"requests.exceptions.HTTPError".',
                        id="queues.E005",
                    )
                )
        if kind is None:
            problems.append(
                Warning(
                    f"JOB_RETRY_POLICIES names {job_type!r}, which is no registered job type.",
                    hint=f"Registered job types: {sorted(registry.all_types())}.",
                    id="queues.W003",
                )
            )
    return problems


def _ages(value: object) -> bool:
    """Whether `value` is a dict of age limits: timedeltas, seconds or None."""
    return isinstance(value, dict) and all(
        age is None
        or isinstance(age, timedelta)
        or (isinstance(age, int | float) and not isinstance(age, bool))
        for age in value.values()
    )


def _retention(raw: dict[str, Any]) -> list[CheckMessage]:
    # (setting as named in a message, {status: count}, {status: age}) of the global settings
    # and of each type's own.
    rules = [("JOB_RETENTION", raw["JOB_RETENTION"], raw["JOB_RETENTION_MAX_AGE"])]
    problems: list[CheckMessage] = []
    for job_type, own in raw["JOB_RETENTION_BY_TYPE"].items():
        named = f"JOB_RETENTION_BY_TYPE[{job_type!r}]"
        rules.append((named, own.get("count", {}), own.get("max_age", {})))
        problems += [
            Error(
                f"{named} names unknown key {key!r}.",
                hint='A type\'s retention has "count" and "max_age", each {status: value}.',
                id="queues.E008",
            )
            for key in sorted(set(own) - RETENTION_RULES)
        ]
        if registry.find(job_type) is None:
            problems.append(
                Warning(
                    f"JOB_RETENTION_BY_TYPE names {job_type!r}, which is no registered job type.",
                    hint=f"Registered job types: {sorted(registry.all_types())}.",
                    id="queues.W004",
                )
            )
    for setting, counts, ages in rules:
        ages_named = "JOB_RETENTION_MAX_AGE" if setting == "JOB_RETENTION" else setting
        for named, statuses in ((setting, counts), (ages_named, ages)):
            problems += [
                Error(
                    f"{named} names unknown status {status!r}.",
                    hint=f"Statuses kept: {sorted(RETENTION_STATUSES)}.",
                    id="queues.E006",
                )
                for status in sorted(set(statuses) - RETENTION_STATUSES)
            ]
        problems += [
            Error(
                f"{setting}[{status!r}] must be zero or more, not {count}.",
                hint="The number of finished records kept per queue and user.",
                id="queues.E002",
            )
            for status, count in counts.items()
            if count < 0
        ]
        problems += [
            Error(
                f"{ages_named} for {status!r} must be above zero, not {age!r}.",
                hint="How long a finished record is kept at most: a timedelta, or seconds; "
                "None for no limit.",
                id="queues.E002",
            )
            for status, age in ages.items()
            if age is not None and retention_age(age) <= timedelta(0)
        ]
    return problems


def _schedules(raw: dict[str, Any]) -> list[CheckMessage]:
    problems: list[CheckMessage] = []
    names: set[object] = set(periodic.all_declared_beside_handlers())
    for entry in raw["QUEUE_SCHEDULES"]:
        reason = _schedule_problem(entry, names)
        names.add(_name(entry))
        if reason:
            problems.append(
                Error(
                    f"QUEUE_SCHEDULES entry {entry!r} {reason}.",
                    hint='e.g. {"job_type": "send_digest", "data": {}, "minutes": 5} or '
                    '{"job_type": "nightly_report", "cron": "0 3 * * *"}',
                    id="queues.E007",
                )
            )
    return problems


def _schedule_problem(entry: dict[str, Any], names: set[object]) -> str | None:
    """Why a `QUEUE_SCHEDULES` entry would not fire its job, or None."""
    unknown = set(entry) - SCHEDULE_KEYS
    if unknown:
        return f"has unknown keys {sorted(unknown)}"
    if sum(key in entry for key in ("job_type", "task", "func")) != 1:
        return "needs one of job_type, task and (the older form) func"
    if "task" not in entry and ("args" in entry or "kwargs" in entry):
        return "sets args or kwargs for a job type; a job type takes data, a task args and kwargs"
    if "task" in entry and "data" in entry:
        return "sets data for a task; a task takes args and kwargs"
    if _name(entry) in names:
        return "repeats a name already declared (an entry's name defaults to its job type's)"
    if "func" in entry and not entry.get("name"):
        return "needs a name besides its func"
    if "func" in entry and not _importable(entry["func"]):
        return f"names func {entry['func']!r}, which cannot be imported"
    timing = [key for key in ("minutes", "every", "cron") if key in entry]
    if len(timing) > 1:
        return f"sets {' and '.join(timing)}; a schedule has one of minutes, every and cron"
    if "minutes" in entry and not _whole_above_zero(entry["minutes"]):
        return f"has minutes {entry['minutes']!r}, not a whole number above zero"
    if "cron" in entry or "every" in entry:
        problem = periodic.schedule_problem(entry.get("every"), entry.get("cron"))
        if problem:
            return f"is wrong: {problem}"
    if "task" in entry:
        try:
            firing = periodic.from_setting(entry)
        except (InvalidTaskError, KeyError, ValueError) as exc:
            return f"names a task that cannot fire: {exc}"
        return _data_problem(firing.job_type, firing.data)
    if "job_type" in entry:
        return _data_problem(entry["job_type"], entry.get("data", {}))
    return None


def _name(entry: dict[str, Any]) -> object:
    return entry.get("name") or entry.get("task") or entry.get("job_type") or entry.get("func")


def _data_problem(job_type: str, data: object) -> str | None:
    kind = registry.find(job_type)
    if kind is None:
        return f"names job type {job_type!r}, which is not registered"
    if not isinstance(data, dict):
        return f"has data {data!r}, not a dict"
    try:  # the user, if any, is looked up when it fires: the database may not exist yet
        kind.validate({"request_id": "periodic", **data}, user_checked=True)
    except JobValidationError as exc:
        return f"has data its job type refuses ({exc})"
    return None


def _whole_above_zero(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _importable(path: str) -> bool:
    module, _, attribute = path.rpartition(".")
    try:
        return callable(getattr(import_module(module), attribute, None))
    except ImportError:
        return False
