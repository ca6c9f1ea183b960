import django.db.models.deletion
from django.db import migrations, models

# The schedules that data migrations created before the sync (queues 0002, 0008, 0009, chat
# 0002): the sync owns them from now on, so it may delete one that is no longer declared.
LEGACY_SCHEDULES = [
    "queues: prune finished job records",
    "queues: push stranded jobs again",
    "chat: re-queue stalled conversation deletions",
]


def adopt_legacy_schedules(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    DeclaredSchedule = apps.get_model("queues", "DeclaredSchedule")
    db = schema_editor.connection.alias
    for pk in Schedule.objects.using(db).filter(name__in=LEGACY_SCHEDULES).values_list("pk"):
        DeclaredSchedule.objects.using(db).get_or_create(schedule_id=pk[0])


class Migration(migrations.Migration):
    dependencies = [
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
        ("queues", "0012_job_trace_context"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeclaredSchedule",
            fields=[
                (
                    "schedule",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to="django_q.schedule",
                    ),
                ),
            ],
        ),
        migrations.RunPython(adopt_legacy_schedules, migrations.RunPython.noop),
    ]
