"""Periodic tasks live in django-q2's Schedule table; apps add theirs in a data migration."""

from django.db import migrations


def periodic_task(name, func, *, minutes=1):
    """A migration operation that (un)installs a django-q2 schedule running `func`."""

    def create(apps, schema_editor):
        apps.get_model("django_q", "Schedule").objects.update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": "I", "minutes": minutes, "repeats": -1},
        )

    def delete(apps, schema_editor):
        apps.get_model("django_q", "Schedule").objects.filter(name=name).delete()

    return migrations.RunPython(create, delete)
