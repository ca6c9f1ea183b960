from django.db import migrations


class Migration(migrations.Migration):
    """Created the redelivery schedule; schedules are now synced after `migrate`
    (queues.schedules), so this is kept, empty, for the migration history."""

    dependencies = [("queues", "0008_maintenance_schedule")]

    operations = []
