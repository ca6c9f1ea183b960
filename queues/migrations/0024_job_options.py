"""Per-job options chosen at enqueue (timeout, retry backoff), progress a handler reports, and a
snoozed job's history event."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("queues", "0023_payload_names_the_runner"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="backoff_seconds",
            field=models.FloatField(
                blank=True, help_text="Retry backoff base in seconds; empty: the type's.", null=True
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="progress",
            field=models.FloatField(blank=True, help_text="Percent done, 0-100.", null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="progress_message",
            field=models.CharField(blank=True, db_default="", default="", max_length=200),
        ),
        migrations.AddField(
            model_name="job",
            name="timeout",
            field=models.FloatField(
                blank=True, help_text="Seconds an attempt may run; empty: the type's.", null=True
            ),
        ),
        migrations.AlterField(
            model_name="jobevent",
            name="action",
            field=models.CharField(
                choices=[
                    ("cancelled", "Cancelled"),
                    ("cancel_requested", "Cancel Requested"),
                    ("stopped", "Stopped"),
                    ("retried", "Retried"),
                    ("snoozed", "Snoozed"),
                ],
                max_length=32,
            ),
        ),
    ]
