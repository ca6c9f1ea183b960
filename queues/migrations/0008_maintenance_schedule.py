from django.db import migrations


class Migration(migrations.Migration):
    """Repointed the maintenance schedule; schedules are now synced after `migrate`
    (queues.schedules), so this is kept, empty, for the migration history."""

    dependencies = [("queues", "0007_job_metrics")]

    operations = []
