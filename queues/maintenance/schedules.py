"""The periodic declarations (`queues.core.periodic`), synced into django-q2's Schedule table after
`migrate`: one row each, whose `next_run` is the start of its next slot.

Declared beside handlers (`job_type(..., every=...)`: queues' own upkeep in
`queues.maintenance.periodic`, an app's in its `jobs.py`) or in `settings.QUEUE_SCHEDULES`. The
sync creates or updates every declared schedule by name and deletes the ones it created earlier
that are no longer declared (`DeclaredSchedule` marks those); schedules added by hand in the admin
are left alone (django-q2 runs their functions as it always has, without a job record).
"""

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from queues.core import periodic


def sync_schedules(apps, using=DEFAULT_DB_ALIAS):
    """Make the Schedule rows we own exactly the declared list. Returns (synced, deleted)."""
    Schedule = apps.get_model("django_q", "Schedule")
    DeclaredSchedule = apps.get_model("queues", "DeclaredSchedule")
    declared = periodic.all_periodic()
    now = timezone.now()
    for name, entry in declared.items():
        fields = {**entry.schedule_fields(), "repeats": -1}
        schedule = Schedule.objects.using(using).filter(name=name).order_by("pk").first()
        # A new or changed declaration starts at its next slot: none was missed yet.
        first = {"next_run": entry.next_slot(entry.latest_slot(now))}
        if schedule is None:
            schedule = Schedule.objects.using(using).create(name=name, **fields, **first)
        elif any(getattr(schedule, field) != value for field, value in fields.items()):
            Schedule.objects.using(using).filter(pk=schedule.pk).update(**fields, **first)
        DeclaredSchedule.objects.using(using).get_or_create(schedule_id=schedule.pk)
    gone = Schedule.objects.using(using).filter(
        pk__in=DeclaredSchedule.objects.using(using).values("schedule_id")
    )
    _, deleted = gone.exclude(name__in=list(declared)).delete()
    return len(declared), deleted.get("django_q.Schedule", 0)


def sync_after_migrate(sender, app_config, using=DEFAULT_DB_ALIAS, apps=global_apps, **kwargs):
    """`post_migrate` receiver (also sent after `flush`): sync once the tables exist."""
    try:
        apps.get_model("django_q", "Schedule")
        apps.get_model("queues", "DeclaredSchedule")
    except LookupError:  # migrated backwards, or not this far yet
        return
    sync_schedules(apps, using)
