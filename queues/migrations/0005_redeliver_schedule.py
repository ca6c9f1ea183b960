from django.db import migrations

from queues.schedules import periodic_task


class Migration(migrations.Migration):
    dependencies = [("queues", "0003_job_cancelled_status")]

    operations = [
        periodic_task(
            "queues: push stranded jobs again", "queues.maintenance.redeliver_stranded_jobs"
        )
    ]
