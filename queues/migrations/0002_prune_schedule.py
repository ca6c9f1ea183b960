from django.db import migrations


class Migration(migrations.Migration):
    """Created the maintenance schedule; schedules are now synced after `migrate`
    (queues.schedules), so this is kept, empty, for the migration history."""

    dependencies = [
        ("queues", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = []
