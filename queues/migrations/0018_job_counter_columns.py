"""One `JobCounter` row per queue, job type and shard, with a column per number.

It was one row per number (`name`, `value`): a job's start and success added to eleven rows.
Existing totals are folded into the new columns; histogram buckets become cumulative (Prometheus'
`le`) and the `_count` rows are dropped (the `+Inf` bucket is the count).
"""

import math
from collections import defaultdict

from django.db import migrations, models

COUNTED = [
    "enqueued",
    "succeeded",
    "failed",
    "attempts_failed",
    "retries_scheduled",
    "cancelled",
    "operator_retries",
    "waiting",
    "running",
]
HISTOGRAMS = ("run_seconds", "wait_seconds")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, math.inf)


def bucket_column(series, bound):
    return f"{series}_le_{bound:g}".replace(".", "_")


def old_bucket_name(series, bound):
    return f"{series}_bucket:{'+Inf' if math.isinf(bound) else bound}"


def fold_rows(apps, schema_editor):
    """Each shard's named rows become one row with the same totals."""
    JobCounter = apps.get_model("queues", "JobCounter")
    groups = defaultdict(dict)
    for row in JobCounter.objects.all():
        groups[(row.queue, row.job_type, row.shard)][row.name] = row.value
    JobCounter.objects.all().delete()
    for (queue, job_type, shard), named in groups.items():
        columns = {name: round(named.get(name, 0)) for name in COUNTED}
        for series in HISTOGRAMS:
            columns[f"{series}_sum"] = named.get(f"{series}_sum", 0.0)
            below = 0
            for bound in BUCKETS:
                below += round(named.get(old_bucket_name(series, bound), 0))
                columns[bucket_column(series, bound)] = below
        JobCounter.objects.create(queue=queue, job_type=job_type, shard=shard, **columns)


def unfold_rows(apps, schema_editor):
    JobCounter = apps.get_model("queues", "JobCounter")
    rows = list(JobCounter.objects.all())
    JobCounter.objects.all().delete()
    for row in rows:
        named = {name: getattr(row, name) for name in COUNTED}
        for series in HISTOGRAMS:
            named[f"{series}_sum"] = getattr(row, f"{series}_sum")
            below = 0
            for bound in BUCKETS:
                cumulative = getattr(row, bucket_column(series, bound))
                named[old_bucket_name(series, bound)] = cumulative - below
                below = cumulative
            named[f"{series}_count"] = below
        JobCounter.objects.bulk_create(
            JobCounter(queue=row.queue, job_type=row.job_type, shard=row.shard, name=n, value=v)
            for n, v in named.items()
            if v
        )


class Migration(migrations.Migration):
    dependencies = [("queues", "0017_job_index_diet")]

    operations = [
        migrations.RemoveConstraint(model_name="jobcounter", name="job_counter_unique"),
        *[
            migrations.AddField(
                model_name="jobcounter",
                name=name,
                field=models.BigIntegerField(
                    db_default=0,
                    **(
                        {"help_text": "Jobs failed for good (once per job)."}
                        if name == "failed"
                        else {}
                    ),
                ),
            )
            for name in COUNTED
        ],
        *[
            operation
            for series in HISTOGRAMS
            for operation in [
                migrations.AddField(
                    model_name="jobcounter",
                    name=f"{series}_sum",
                    field=models.FloatField(db_default=0),
                ),
                *[
                    migrations.AddField(
                        model_name="jobcounter",
                        name=bucket_column(series, bound),
                        field=models.BigIntegerField(db_default=0),
                    )
                    for bound in BUCKETS
                ],
            ]
        ],
        # `name` gets a default for the new rows; it goes next.
        migrations.AlterField(
            model_name="jobcounter", name="name", field=models.CharField(max_length=64, default="")
        ),
        migrations.RunPython(fold_rows, unfold_rows),
        migrations.RemoveField(model_name="jobcounter", name="name"),
        migrations.RemoveField(model_name="jobcounter", name="value"),
        migrations.AddConstraint(
            model_name="jobcounter",
            constraint=models.UniqueConstraint(
                fields=("queue", "job_type", "shard"), name="job_counter_unique"
            ),
        ),
    ]
