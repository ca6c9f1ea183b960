from django.db import migrations

from queues.schedules import periodic_task


class Migration(migrations.Migration):
    dependencies = [("queues", "0008_maintenance_schedule")]

    operations = [
        periodic_task(
            "queues: push stranded jobs again", "queues.maintenance.redeliver_stranded_jobs"
        )
    ]
