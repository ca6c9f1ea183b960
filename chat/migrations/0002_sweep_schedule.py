from django.db import migrations

from queues.schedules import periodic_task


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0001_initial"),
        ("queues", "0002_prune_schedule"),
    ]

    operations = [
        periodic_task("chat: re-queue stalled conversation deletions", "chat.sweeper.sweep_deletions")
    ]
