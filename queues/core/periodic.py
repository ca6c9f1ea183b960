"""Periodic jobs: job types fired on an interval or a cron expression, each firing a real job.

Declared beside the handler (`job_type(..., every=timedelta(hours=1))` or `cron="0 3 * * *"`) or
in `settings.QUEUE_SCHEDULES` (`{"job_type": ..., "data": {...}, "minutes": 5}`, or a `cron`).
Each declaration is a row of django-q2's Schedule table, synced after `migrate`
(`queues.maintenance.schedules`), whose `next_run` is the start of its next time slot; the
cluster's scheduler pass (`queues.django_q2.scheduler`, about every 30 s) fires a due one:

- it enqueues one job of the type for the **latest** slot that has started (after downtime, the
  slots missed before it are not run: one job, not one per slot), then moves `next_run` to the
  slot after it, in one transaction with the row locked;
- the job's unique key is the declaration's name and the slot's start, held whatever its status
  (`uniqueness.slot_key`), so any number of clusters firing the same slot store one job.

Slots: an interval's are aligned on the Unix epoch (every hour: on the hour, UTC); a cron
expression's are its times in `TIME_ZONE` (croniter, as django-q2 reads it).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from django.utils import timezone

from queues.conf import conf
from queues.core import pausing, registry, services, uniqueness

# The function a periodic declaration's Schedule row names: the scheduler pass calls it in place
# (`fire_schedule`); django-q2's own scheduler, should it run the row, calls it in a worker.
FIRE = "queues.core.periodic.fire"
# The shortest interval: the scheduler passes about every 30 s, so a shorter one would skip slots.
SHORTEST = timedelta(minutes=1)
_ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Periodic:
    """One periodic declaration: `job_type` fired with `data` every `every` or on `cron`."""

    name: str  # unique among declarations: the Schedule row's name and part of each slot's key
    job_type: str
    data: dict[str, Any] = field(default_factory=dict)
    every: timedelta | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        problem = schedule_problem(self.every, self.cron)
        if problem:
            raise ValueError(f"periodic {self.name!r}: {problem}")

    def latest_slot(self, now: datetime) -> datetime:
        """The start of the latest slot that has started at `now`."""
        if self.every is not None:
            return uniqueness.window_start(now, self.every)
        local = timezone.localtime(now)
        return croniter(self.cron, local + _ONE_MICROSECOND).get_prev(datetime)

    def next_slot(self, slot: datetime) -> datetime:
        """The start of the slot after the one starting at `slot`."""
        if self.every is not None:
            return slot + self.every
        return croniter(self.cron, timezone.localtime(slot)).get_next(datetime)

    def schedule_fields(self) -> dict[str, Any]:
        """The fields of its Schedule row, but `next_run` (`queues.maintenance.schedules`)."""
        if self.cron:
            kind = {"schedule_type": "C", "cron": self.cron, "minutes": None}
        else:
            kind = {"schedule_type": "I", "minutes": self.every // SHORTEST, "cron": None}
        return {"func": FIRE, "args": repr(self.name), **kind}


def schedule_problem(every: object, cron: object) -> str | None:
    """Why `every` / `cron` make no schedule, or None."""
    if (every is None) == (cron is None):
        return "needs one of every (a timedelta) and cron"
    if every is not None:
        if not isinstance(every, timedelta) or every < SHORTEST or every % SHORTEST:
            return f"every must be a timedelta of whole minutes, at least one, not {every!r}"
    elif not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
        return f"cron {cron!r} is no five-field cron expression croniter reads"
    return None


_declared: dict[str, Periodic] = {}


def declare(declaration: Periodic) -> None:
    """Fire `declaration.job_type` (with empty data) on its schedule: `job_type(..., every=...)`
    calls it once the type is registered."""
    if declaration.name in _declared:
        raise ValueError(f"job type {declaration.name!r} is already periodic")
    _declared[declaration.name] = declaration


def all_declared_beside_handlers() -> dict[str, Periodic]:
    return dict(_declared)


def from_setting(entry: dict[str, Any]) -> Periodic:
    """A `QUEUE_SCHEDULES` entry as a declaration (the checks, `queues.E007`, vouch for it).

    `{"job_type": ..., "data": {...}, "name": ..., "minutes": n | "every": timedelta |
    "cron": ...}`; a `task` entry (a django.tasks `@task` of our backend, with `args` and
    `kwargs`) fires the task's job type; a `func` entry (a dotted path, the older form) fires
    `call_function` with it. The name defaults to the job type's (the task's path for a task);
    minutes default to 1.
    """
    if "func" in entry:
        job_type, data = CALL_FUNCTION, {"func": entry["func"]}
    elif "task" in entry:
        from queues.extras.task_backend import periodic_firing

        job_type, data = periodic_firing(entry)
    else:
        job_type, data = entry["job_type"], dict(entry.get("data") or {})
    every = entry.get("every")
    if every is None and not entry.get("cron"):
        every = timedelta(minutes=entry.get("minutes", 1))
    name = entry.get("name") or entry.get("task") or job_type
    return Periodic(name, job_type, data, every=every, cron=entry.get("cron"))


# The job type of `func` entries (`queues.maintenance.periodic.call_function`).
CALL_FUNCTION = "call_function"


def all_periodic() -> dict[str, Periodic]:
    """Every declaration, by name: those beside handlers, then `settings.QUEUE_SCHEDULES`'."""
    found = dict(_declared)
    for entry in conf.QUEUE_SCHEDULES:
        periodic = from_setting(entry)
        found[periodic.name] = periodic
    return found


def find(name: str) -> Periodic | None:
    return all_periodic().get(name)


def fire(name: str, now: datetime | None = None) -> Any:
    """Enqueue the job of `name`'s latest slot at `now`, unless a cluster did; returns the job
    (the slot's existing one, `deduplicated` set)."""
    periodic = _declaration(name)
    return _enqueue(periodic, periodic.latest_slot(now or timezone.now()))


def fire_schedule(schedule: Any, now: datetime | None = None) -> Any:
    """The scheduler pass's firing of a due Schedule row of a declaration (locked by the
    caller): the latest slot's job, and `next_run` moved to the slot after it. Returns the job,
    or None while the type's queue is paused: the row stays due, and the resume fires its latest
    slot once (as after downtime), not a job per slot of the pause."""
    periodic = _declaration(ast.literal_eval(schedule.args))
    kind = registry.find(periodic.job_type)
    if kind is not None and pausing.is_paused(kind.queue):
        return None
    slot = periodic.latest_slot(now or timezone.now())
    job = _enqueue(periodic, slot)
    schedule.next_run = periodic.next_slot(slot)
    schedule.task = str(job.pk)
    schedule.save(update_fields=["next_run", "task"])
    return job


def _declaration(name: str) -> Periodic:
    periodic = all_periodic().get(name)
    if periodic is None:
        raise LookupError(f"no periodic job named {name!r} is declared (run migrate)")
    return periodic


def _enqueue(periodic: Periodic, slot: datetime) -> Any:
    return services.enqueue_slot(
        periodic.job_type, periodic.data, periodic=periodic.name, slot=slot
    )
