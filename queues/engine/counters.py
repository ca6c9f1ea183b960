"""Count job state changes in the database, in the transaction that makes them.

Each function here is called exactly where a job changes state (enqueue, runner, operator retry,
cancel), so the totals are as durable and as consistent as the job records themselves, whichever
process or host did the work, and they outlive the pruning of those records. `queues.web.metrics`
reads them at scrape time. A change adds to the columns of one `JobCounter` row, its queue's and
job type's in this process's shard: gauges as running deltas (`waiting`, `running`), histograms
as a `_sum` and cumulative buckets.
"""

import math
import os

from django.db import connection
from django.utils import timezone

from queues.engine.statements import execute_together
from queues.models import HISTOGRAM_BUCKETS, JobCounter, JobMinute, bucket_column

# Concurrent workers add to different rows (by pid), so they do not wait on each other's locks:
# more shards than a cluster's workers (10 by default), whose pids are mostly consecutive.
SHARDS = 16
_KEY = ["queue", "job_type", "shard"]


def job_enqueued(job, also=()):
    """`also`: statements storing the job (record, broker row), sent in the same round trip;
    the first one's rows are returned."""
    return _add(job, also=also, enqueued=1, waiting=1)


def jobs_enqueued_sql(queue, job_type, source):
    """(sql, params): what `job_enqueued` adds, once for each row of the CTE `source` (the jobs
    an INSERT ... ON CONFLICT DO NOTHING actually stored; nothing when it stored none)."""
    sql = _counted_rows_sql(
        "%s, %s",
        "%s",
        f"(SELECT count(*) AS n FROM {source}) s",
        {"enqueued": "s.n", "waiting": "s.n"},
        where="s.n > 0",
    )
    return sql, [queue, job_type, os.getpid() % SHARDS]


def attempt_started(job):
    """`job` as it waited: its `run_after` is when it became due (enqueue, backoff, operator)."""
    deltas = {"waiting": -1, "running": 1}
    _observe(deltas, "wait_seconds", (timezone.now() - job.run_after).total_seconds())
    _add(job, **deltas)


def _counted_rows_sql(key, shard, source, deltas, observed=None, where=None):
    """An upsert adding `deltas` ({column: SQL expression}) and one observation of the histogram
    `observed` ((series, seconds expression)), if any, to the counters row of `key` and `shard`
    (SQL expressions), once for each row of `source` (a FROM item) matching `where`."""
    table = connection.ops.quote_name(JobCounter._meta.db_table)
    columns = {name: str(value) for name, value in deltas.items()}
    if observed:
        series, seconds = observed
        source += f" CROSS JOIN LATERAL (SELECT {seconds} AS seconds) o"
        columns[f"{series}_sum"] = "greatest(o.seconds, 0)"
        for bound in HISTOGRAM_BUCKETS:
            observed_here = "1" if math.isinf(bound) else f"(o.seconds <= {bound!r})::int"
            columns[bucket_column(series, bound)] = observed_here
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in columns)
    return (
        f"INSERT INTO {table} ({', '.join([*_KEY, *columns])})"
        f" SELECT {key}, {shard}, {', '.join(columns.values())}"
        f" FROM {source}{f' WHERE {where}' if where else ''}"
        f" ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET {updates}"
    )


def worker_lost(job, *, final):
    """A `running` job whose worker died: its attempt failed; it fails or runs again."""
    if final:
        _add(job, {"failed": 1}, attempts_failed=1, failed=1, running=-1)
    else:
        _add(job, {"failed": 1}, attempts_failed=1, retries_scheduled=1)


def attempt_succeeded(job, seconds, also=()):
    """`also`: the statements recording the outcome, sent first in the same round trip; the
    first one's rows are returned (as for `attempt_failed`). PostgreSQL's engine sends its own,
    prepared form of these counters (`queues.engine.postgresql.succeeded_counted_sql`)."""
    deltas = {"succeeded": 1, "running": -1}
    _observe(deltas, "run_seconds", seconds)
    return _add(job, {"succeeded": 1, "run_seconds": seconds}, also, **deltas)


def attempt_failed(job, seconds, *, retry, also=()):
    deltas = {"attempts_failed": 1, "running": -1}
    deltas.update({"waiting": 1, "retries_scheduled": 1} if retry else {"failed": 1})
    _observe(deltas, "run_seconds", seconds)
    return _add(job, {"failed": 1, "run_seconds": seconds}, also, **deltas)


def attempt_cancelled(job, also=()):
    """A running job's handler stopped at a stop request (`queues.execution.cancellation`)."""
    return _add(job, also=also, cancelled=1, running=-1)


def attempt_snoozed(job, also=()):
    """A running job's handler snoozed it: it waits again, no attempt counted as failed."""
    return _add(job, also=also, running=-1, waiting=1)


def jobs_cancelled(queue, job_type, count):
    if count:
        _add_for(queue, job_type, cancelled=count, waiting=-count)


def retried_by_operator(job):
    _add(job, operator_retries=1, waiting=1)


def push_failed(job):
    """A committed job whose push to a broker outside the database (Redis) failed."""
    _add(job, push_failures=1)


def _observe(deltas, series, seconds):
    deltas[f"{series}_sum"] = max(seconds, 0.0)
    for bound in HISTOGRAM_BUCKETS:
        if seconds <= bound:
            deltas[bucket_column(series, bound)] = 1


def _add(job, minute=None, also=(), **deltas):
    return _add_for(job.queue, job.job_type, minute, also, **deltas)


def _add_for(queue, job_type, minute=None, also=(), **deltas):
    """Add `deltas` to the counters and, for a finished attempt, `minute` to this minute's row.

    This process's shard only, so concurrent workers rarely wait on each other's locks.
    """
    row = (queue, job_type, os.getpid() % SHARDS, *deltas.values())
    statements = [*also, _upsert(JobCounter, _KEY, [row], list(deltas))]
    if minute:
        statements.append(_minute_upsert(queue, job_type, minute))
    return execute_together(statements)


def _minute_upsert(queue, job_type, minute):
    """(sql, params) adding a finished attempt (`minute`: succeeded, failed, run_seconds) to this
    minute's row of this process's shard."""
    values = [minute.get(c, 0) for c in ("succeeded", "failed", "run_seconds")]
    return _upsert(
        JobMinute,
        ["queue", "job_type", "minute", "shard"],
        [(queue, job_type, this_minute(), os.getpid() % SHARDS, *values)],
        ["succeeded", "failed", "run_seconds"],
    )


def this_minute():
    """The minute a finished attempt is counted in (`JobMinute`)."""
    return timezone.now().replace(second=0, microsecond=0)


def _upsert(model, key_columns, rows, value_columns):
    """(sql, params): INSERT rows; on conflict add their values to the existing row."""
    table = connection.ops.quote_name(model._meta.db_table)
    columns = [*key_columns, *value_columns]
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in value_columns)
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {placeholders} "
        f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {updates}"
    )
    return sql, [value for row in rows for value in row]
