"""Migration 0018 folds the counters' one-row-per-number layout into one row per shard, and back,
without changing a total: the metrics before and after an upgrade are the same numbers."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from queues.core import selectors

BEFORE = ("queues", "0017_job_index_diet")
AFTER = ("queues", "0018_job_counter_columns")
# name, shard, value: one queue and type, its numbers spread over two shards by the workers.
NAMED_ROWS = [
    ("enqueued", 1, 5),
    ("enqueued", 2, 3),
    ("waiting", 1, 2),
    ("running", 2, 1),
    ("run_seconds_bucket:0.5", 1, 2),
    ("run_seconds_bucket:1", 1, 1),
    ("run_seconds_bucket:+Inf", 2, 1),
    ("run_seconds_count", 1, 3),
    ("run_seconds_count", 2, 1),
    ("run_seconds_sum", 1, 1.75),
    ("run_seconds_sum", 2, 400.0),
]


def migrate(target=None):
    """To `target`, or to the latest migration of every app."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target] if target else executor.loader.graph.leaf_nodes())


def named_rows():
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, shard, value FROM queues_jobcounter ORDER BY name, shard")
        return cursor.fetchall()


@pytest.mark.django_db(transaction=True)
def test_counters_keep_their_totals_through_the_migration_and_back():
    migrate(BEFORE)
    try:
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO queues_jobcounter (queue, job_type, name, shard, value)"
                " VALUES ('database', 'delete_conversation', %s, %s, %s)",
                NAMED_ROWS,
            )
        migrate(AFTER)
        migrate()  # the later ones add columns, which the totals read too
        totals = {
            name: value
            for (queue, job_type, name), value in selectors.counter_totals().items()
            if (queue, job_type) == ("database", "delete_conversation")
        }
        assert (totals["enqueued"], totals["waiting"], totals["running"]) == (8, 2, 1)
        assert totals["succeeded"] == 0
        buckets, seconds, count = selectors.histogram(
            selectors.counter_totals(), "database", "run_seconds", "delete_conversation"
        )
        per_bound = dict(buckets)
        assert (per_bound[0.25], per_bound[0.5], per_bound[1], per_bound[300]) == (0, 2, 3, 3)
        assert (per_bound[float("inf")], count, seconds) == (4, 4, 401.75)

        migrate(BEFORE)
        # The same rows, except that each shard's `_count` is now the sum of its buckets.
        expected = sorted(
            [row for row in NAMED_ROWS if not row[0].endswith("_count")]
            + [("run_seconds_count", 1, 3), ("run_seconds_count", 2, 1)]
        )
        assert named_rows() == expected
    finally:
        migrate()
