import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    """Fewer index entries per job write: every status change of a job (three per job: insert,
    begin, outcome) adds an entry to each index whose predicate the new row meets, since `status`
    is indexed and no update is HOT (docs/job-queue.md, "Indexes of queues_job").

    - the `user` FK's own index goes: `job_user_status_idx` starts with `user_id`;
    - `subject` and `request_id` lose their `varchar_pattern_ops` twins (no query matches a
      prefix) and keep a plain index;
    - `retried_by` and `cancel_requested_by` index only the few rows that name someone;
    - `(status, run_after)` holds live jobs only, retention's index finished jobs only: each
      query of theirs names those statuses.

    Plain CREATE INDEX, as in 0016: job records are bounded by retention.
    """

    dependencies = [
        ("queues", "0016_job_search_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(model_name="job", name="job_status_run_after_idx"),
        migrations.RemoveIndex(model_name="job", name="job_user_retention_idx"),
        migrations.AlterField(
            model_name="job",
            name="user",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="job",
            name="retried_by",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="job",
            name="cancel_requested_by",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="job",
            name="subject",
            field=models.CharField(blank=True, max_length=128),
        ),
        migrations.AlterField(
            model_name="job",
            name="request_id",
            field=models.CharField(blank=True, max_length=128),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status__in", ["succeeded", "failed", "cancelled"])),
                fields=["queue", "status", "user", "-finished_at"],
                name="job_retention_finished_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status__in", ["queued", "running", "retrying"])),
                fields=["status", "run_after"],
                name="job_live_status_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(fields=["subject"], name="job_subject_idx"),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(fields=["request_id"], name="job_request_id_idx"),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("retried_by__isnull", False)),
                fields=["retried_by"],
                name="job_retried_by_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                condition=models.Q(("cancel_requested_by__isnull", False)),
                fields=["cancel_requested_by"],
                name="job_cancel_requested_by_idx",
            ),
        ),
    ]
