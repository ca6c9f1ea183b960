"""The unique-key index becomes a constraint declared on `Job`, so every table rebuild keeps it.

Migration 0015 created `job_unique_key_idx` with raw SQL. On SQLite, 0017's rebuild of
`queues_job` dropped it (a rebuild recreates only what the model declares), so unique jobs were
not enforced there. The constraint takes the index's name and meaning: the old index, where it
still exists (PostgreSQL), is dropped and built again in this migration's transaction. Jobs that
SQLite let share a held key keep running: all but the oldest stop holding it
(`unique_states = 0`), so the index can be built.
"""

import importlib

import django.db.models.expressions
import django.db.models.lookups
from django.db import migrations, models
from django.db.models import Count


# A job holds its key while the bit of its status is among its `unique_states`.
HOLDS_KEY = models.Q(
    django.db.models.lookups.GreaterThan(
        django.db.models.expressions.CombinedExpression(
            models.F("unique_states"),
            "&",
            models.Case(
                models.When(status="queued", then=models.Value(1)),
                models.When(status="running", then=models.Value(2)),
                models.When(status="retrying", then=models.Value(4)),
                models.When(status="succeeded", then=models.Value(8)),
                models.When(status="failed", then=models.Value(16)),
                models.When(status="cancelled", then=models.Value(32)),
                default=models.Value(0),
            ),
        ),
        0,
    )
)
RAW_INDEX = importlib.import_module("queues.migrations.0015_unique_jobs_and_priority")


def release_shared_keys(apps, schema_editor):
    Job = apps.get_model("queues", "Job")
    holding = Job.objects.filter(HOLDS_KEY).exclude(unique_key="")
    shared = holding.values("unique_key").annotate(n=Count("id"))
    for row in shared.filter(n__gt=1):
        oldest = holding.filter(unique_key=row["unique_key"]).order_by("created_at", "id")[0]
        holding.filter(unique_key=row["unique_key"]).exclude(pk=oldest.pk).update(unique_states=0)


class Migration(migrations.Migration):
    dependencies = [("queues", "0020_schedule_failure_counter")]

    operations = [
        migrations.RunPython(release_shared_keys, migrations.RunPython.noop),
        migrations.RunSQL(
            "DROP INDEX IF EXISTS job_unique_key_idx", reverse_sql=RAW_INDEX.CREATE_UNIQUE_INDEX
        ),
        migrations.AddConstraint(
            model_name="job",
            constraint=models.UniqueConstraint(
                condition=HOLDS_KEY,
                fields=("unique_key",),
                name="job_unique_key_idx",
            ),
        ),
    ]
