"""The broker row's priority on SQLite too, so its workers claim by priority as PostgreSQL's do.

Migration 0011 added the column and its claim index on PostgreSQL only (SQLite then kept
django-q2's own claim, oldest first). django-q2 owns the table, so this is raw SQL; a rebuild of
the table by a django-q2 migration would drop both (tests/test_schema.py would tell).
"""

from django.db import migrations

TABLE = "django_q_ormq"


def add_priority(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    with schema_editor.connection.cursor() as cursor:
        columns = {
            c.name
            for c in schema_editor.connection.introspection.get_table_description(cursor, TABLE)
        }
    if "priority" not in columns:
        schema_editor.execute(
            f"ALTER TABLE {TABLE} ADD COLUMN priority smallint NOT NULL DEFAULT 0"
        )
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS queues_ormq_priority_claim_idx ON {TABLE} (key, priority, lock, id)"
    )


def drop_priority(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    schema_editor.execute("DROP INDEX IF EXISTS queues_ormq_priority_claim_idx")
    schema_editor.execute(f"ALTER TABLE {TABLE} DROP COLUMN priority")


class Migration(migrations.Migration):
    dependencies = [("queues", "0021_unique_key_constraint")]

    operations = [migrations.RunPython(add_priority, drop_priority)]
