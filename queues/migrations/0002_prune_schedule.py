from django.db import migrations

from queues.schedules import periodic_task


class Migration(migrations.Migration):
    dependencies = [
        ("queues", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        periodic_task("queues: prune finished job records", "queues.maintenance.prune_finished_jobs")
    ]
