from django.db import migrations


class Migration(migrations.Migration):
    """Index django-q2's broker table for the claim: due rows of one queue, oldest first.

    django-q2 owns the table, so this is raw SQL rather than an index on its model.
    """

    dependencies = [
        ("queues", "0003_job_cancelled_status"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS queues_ormq_claim_idx ON django_q_ormq (key, lock, id)",
            reverse_sql="DROP INDEX IF EXISTS queues_ormq_claim_idx",
        ),
    ]
