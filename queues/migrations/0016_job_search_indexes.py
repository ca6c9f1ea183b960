from django.db import migrations, models


class Migration(migrations.Migration):
    """Indexes for the dashboard's job search (docs/dashboard.md): newest first by keyset, failed
    jobs newest first, and finished jobs by when they finished.

    Plain CREATE INDEX: job records are bounded by retention (about 100k rows take well under a
    second to index), and the lock only holds writers back that long.
    """

    dependencies = [
        ("queues", "0015_unique_jobs_and_priority"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="job",
            index=models.Index(fields=["created_at", "id"], name="job_created_idx"),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "failed")),
                fields=["created_at", "id"],
                name="job_failed_created_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("finished_at__isnull", False)),
                fields=["finished_at"],
                name="job_finished_idx",
            ),
        ),
    ]
