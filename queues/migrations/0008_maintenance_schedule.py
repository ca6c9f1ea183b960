from django.db import migrations


def point_at(func):
    def update(apps, schema_editor):
        apps.get_model("django_q", "Schedule").objects.filter(
            name="queues: prune finished job records"
        ).update(func=func)

    return update


class Migration(migrations.Migration):
    """The maintenance schedule now also drops old per-minute stats."""

    dependencies = [("queues", "0007_job_metrics")]

    operations = [
        migrations.RunPython(
            point_at("queues.maintenance.prune"),
            point_at("queues.maintenance.prune_finished_jobs"),
        )
    ]
