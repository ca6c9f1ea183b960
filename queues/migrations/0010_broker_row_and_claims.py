from django.db import migrations, models


class Migration(migrations.Migration):
    """The job's broker row (so the rescuer sees a lost one), and an index of claimed broker rows.

    A claimed row's key is `<queue>@<token>` (queues.broker); the partial index keeps the search
    for a dead cluster's claims among claimed rows only, however long the queue. Raw SQL, since
    django-q2 owns the table.
    """

    dependencies = [("queues", "0009_redeliver_schedule")]

    operations = [
        migrations.AddField(
            model_name="job",
            name="broker_row",
            field=models.BigIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS queues_ormq_claimed_idx ON django_q_ormq (key) "
            "WHERE key LIKE '%@%'",
            reverse_sql="DROP INDEX IF EXISTS queues_ormq_claimed_idx",
        ),
    ]
