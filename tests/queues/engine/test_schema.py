"""The schema a fresh `migrate` leaves, on either database: a table rebuild (SQLite's way of
altering a table) keeps only what a model declares, so what raw SQL made is checked here."""

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db


def constraints(table):
    with connection.cursor() as cursor:
        return connection.introspection.get_constraints(cursor, table)


def test_the_unique_key_index_is_there_and_unique():
    index = constraints("queues_job")["job_unique_key_idx"]
    assert index["unique"] and index["columns"] == ["unique_key"]


def test_the_broker_tables_raw_sql_indexes_are_there():
    """django-q2 owns `django_q_ormq`, so its claim indexes and `priority` column are raw SQL
    (migrations 0006, 0010, 0011 and 0022); a django-q2 migration rebuilding the table would drop
    them."""
    expected = {
        "queues_ormq_claim_idx",
        "queues_ormq_claimed_idx",
        "queues_ormq_priority_claim_idx",
    }
    assert expected <= set(constraints("django_q_ormq"))
    with connection.cursor() as cursor:
        columns = connection.introspection.get_table_description(cursor, "django_q_ormq")
    assert "priority" in {column.name for column in columns}
