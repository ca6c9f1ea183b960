from django.db import migrations


class Migration(migrations.Migration):
    """Created the sweeper's schedule; it is now declared in `settings.QUEUE_SCHEDULES` and
    synced after `migrate` (queues.schedules), so this is kept, empty, for the history."""

    dependencies = [
        ("chat", "0001_initial"),
        ("queues", "0002_prune_schedule"),
    ]

    operations = []
