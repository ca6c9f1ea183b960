"""Periodic tasks, declared in one list and synced into django-q2's Schedule table after `migrate`.

`queues` declares its own upkeep (`MAINTENANCE`); the project adds its apps' tasks through
`settings.QUEUE_SCHEDULES` (queues imports no other app). Each entry: `name` (unique), `func`
(dotted path), and `minutes` (default 1) or a `cron` expression. The sync creates or updates
every declared schedule by name and deletes the ones it created earlier that are no longer
declared (`DeclaredSchedule` marks those); schedules added by hand in the admin are left alone.
"""

from typing import Any

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS

from queues.conf import conf

MAINTENANCE: list[dict[str, Any]] = [
    # Retention of finished job records, and per-minute stats older than two hours. Every five
    # minutes: retention counts records, so a later prune only keeps a few more for a while, and
    # an idle cluster sends fewer statements.
    {
        "name": "queues: prune finished job records",
        "func": "queues.maintenance.periodic.prune",
        "minutes": 5,
    },
    # A rescue pass over every queue, for clusters whose pusher waits on busy workers.
    {
        "name": "queues: push stranded jobs again",
        "func": "queues.maintenance.periodic.redeliver_stranded_jobs",
    },
]


def declared_schedules():
    return [*MAINTENANCE, *conf.QUEUE_SCHEDULES]


def schedule_fields(entry):
    """The Schedule row's fields for one declared entry."""
    if entry.get("cron"):
        return {"func": entry["func"], "schedule_type": "C", "cron": entry["cron"], "minutes": None}
    return {
        "func": entry["func"],
        "schedule_type": "I",
        "minutes": entry.get("minutes", 1),
        "cron": None,
    }


def sync_schedules(apps, using=DEFAULT_DB_ALIAS):
    """Make the Schedule rows we own exactly the declared list. Returns (synced, deleted)."""
    Schedule = apps.get_model("django_q", "Schedule")
    DeclaredSchedule = apps.get_model("queues", "DeclaredSchedule")
    declared = declared_schedules()
    for entry in declared:
        fields = {**schedule_fields(entry), "repeats": -1}
        schedule = Schedule.objects.using(using).filter(name=entry["name"]).order_by("pk").first()
        if schedule is None:
            schedule = Schedule.objects.using(using).create(name=entry["name"], **fields)
        elif any(getattr(schedule, field) != value for field, value in fields.items()):
            Schedule.objects.using(using).filter(pk=schedule.pk).update(**fields)
        DeclaredSchedule.objects.using(using).get_or_create(schedule_id=schedule.pk)
    gone = Schedule.objects.using(using).filter(
        pk__in=DeclaredSchedule.objects.using(using).values("schedule_id")
    )
    _, deleted = gone.exclude(name__in=[entry["name"] for entry in declared]).delete()
    return len(declared), deleted.get("django_q.Schedule", 0)


def sync_after_migrate(sender, app_config, using=DEFAULT_DB_ALIAS, apps=global_apps, **kwargs):
    """`post_migrate` receiver (also sent after `flush`): sync once the tables exist."""
    try:
        apps.get_model("django_q", "Schedule")
        apps.get_model("queues", "DeclaredSchedule")
    except LookupError:  # migrated backwards, or not this far yet
        return
    sync_schedules(apps, using)
