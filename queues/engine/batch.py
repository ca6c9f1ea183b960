"""Storing jobs in one statement: many at once (`enqueue_many`), and unique ones deduplicated.

On PostgreSQL one round trip stores the records, their broker rows (with the NOTIFY) and the
counters, for the jobs actually inserted: `INSERT ... ON CONFLICT DO NOTHING` on the unique index
(`queues.core.uniqueness`) skips a duplicate, and the broker rows and counters are built from what
that INSERT returns, so a duplicate gets neither. Only a duplicate costs a second round trip, to
read the job holding its key. SQLite stores job by job: its writers take turns (IMMEDIATE
transactions), so looking for the holder first is race-free there.
"""

from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.models.expressions import RawSQL

from queues.core import uniqueness
from queues.django_q2.push import broker_in_database, next_row_id_sql, push, push_many_statement
from queues.engine import counters
from queues.engine.statements import execute_together, insert_from_statement, insert_rows_statement
from queues.models import Job

# A holder found finishing between the INSERT and the read frees its key: try again, a few times.
ROUNDS = 3
# Jobs per statement: a bigger batch takes several statements, in the same transaction.
ROWS_PER_STATEMENT = 500


def store(kind, jobs):
    """Store `jobs` (new, validated Job instances of `kind`) in the caller's transaction.

    Returns, in order, each stored job or, for a duplicate, the job holding its unique key, with
    `deduplicated` set. Jobs of one batch with the same key get one job (the first).
    """
    _set_unique_key(kind, jobs)
    first = {}
    for job in jobs:
        first.setdefault(job.unique_key or job.pk, job)
    holders, pending = {}, list(first.values())
    with transaction.atomic(savepoint=False):
        for _ in range(ROUNDS):
            stored = _insert(kind, pending)
            skipped = [job for job in pending if job.pk not in stored]
            holders.update(_holders([job.unique_key for job in skipped]))
            pending = [job for job in skipped if job.unique_key not in holders]
            if not pending:
                break
        else:
            raise RuntimeError(f"{kind.name}: holders of {len(pending)} unique keys kept moving")
    return [holders.get(job.unique_key) or first[job.unique_key or job.pk] for job in jobs]


def store_if(kind, job, condition):
    """Store `job` only if `condition` returns a row, atomically with it: (that row, the job or
    the job holding its unique key), or (None, None).

    `condition` is (sql, params): a statement returning at most one row, such as a conditional
    `UPDATE ... RETURNING`. On PostgreSQL with the broker in the database both are one statement
    (the INSERT selects from the condition's CTE), so it needs no transaction of its own: no BEGIN
    and COMMIT round trips when the caller has none open. Elsewhere the condition runs first, then
    `store`, in one transaction.
    """
    if connection.vendor != "postgresql" or not broker_in_database():
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(*condition)
                row = cursor.fetchone()
            return (row, store(kind, [job])[0]) if row is not None else (None, None)
    _set_unique_key(kind, [job])
    rows = _insert_together(kind, [job], condition)
    if not rows:
        return None, None
    ((job_id, broker_row, *row),) = rows
    if job_id is not None:
        return tuple(row), _stored(job, broker_row)
    # A duplicate: the condition's change is made; the job is the holder's, or, should the holder
    # have finished meanwhile, stored now.
    return tuple(row), store(kind, [job])[0]


def _set_unique_key(kind, jobs):
    for job in jobs:
        job.unique_key = uniqueness.key_of(kind, job.data)
        job.unique_states = uniqueness.states_mask(kind)


def _insert(kind, jobs):
    """Insert those of `jobs` whose unique key is free; return their ids."""
    if connection.vendor != "postgresql":
        return _insert_one_by_one(kind, jobs)
    stored = set()
    for start in range(0, len(jobs), ROWS_PER_STATEMENT):
        batch = jobs[start : start + ROWS_PER_STATEMENT]
        rows = dict(_insert_together(kind, batch))
        for job in batch:
            if job.pk in rows:
                _stored(job, rows[job.pk])
        stored |= set(rows)
    return stored


def _insert_together(kind, jobs, condition=None):
    """One statement storing `jobs`, their broker rows and counters; returns (id, broker row) of
    each job stored. With a `condition` (`store_if`: one job) it is a CTE the INSERT selects
    from, and the one row returned, if the condition returned one, is (id or None, broker row,
    the condition's columns...)."""
    in_database = broker_in_database()
    for job in jobs:
        job.broker_row = RawSQL(next_row_id_sql(), []) if in_database else None
    if condition is None:
        insert, params = insert_rows_statement(jobs)
        statements = [("SELECT id, broker_row FROM stored", [])]
    else:
        (job,) = jobs
        insert, params = insert_from_statement(job, "condition")
        statements = [
            ("SELECT s.id, s.broker_row, c.* FROM condition c LEFT JOIN stored s ON true", []),
            (*condition, "condition"),
        ]
    if kind.unique:
        holds_key = uniqueness.holds_key_sql(connection.vendor)
        insert += f" ON CONFLICT (unique_key) WHERE {holds_key} DO NOTHING"
    statements += [
        (f"{insert} RETURNING id, broker_row", params, "stored"),
        (*counters.jobs_enqueued_sql(kind.queue, kind.name, "stored"), "counted"),
    ]
    if in_database:
        statements.append((*push_many_statement(jobs, "stored"), "broker_rows"))
    return execute_together(statements)


def _stored(job, broker_row):
    """`job` as `save()` leaves it, knowing its broker row; on a broker outside the database
    (Redis), pushed (after the commit)."""
    job.broker_row = broker_row
    job._state.adding, job._state.db = False, DEFAULT_DB_ALIAS
    if broker_row is None:
        push(job)
    return job


def _insert_one_by_one(kind, jobs):
    held = _holders([job.unique_key for job in jobs])
    stored = [job for job in jobs if job.unique_key not in held]
    for job in stored:
        job.broker_row = push(job)
        job.save(force_insert=True)
        counters.job_enqueued(job)
    return {job.pk for job in stored}


def _holders(keys):
    """{unique key: the job holding it}, among `keys`."""
    keys = [key for key in keys if key]
    if not keys:
        return {}
    jobs = Job.objects.filter(uniqueness.HOLDS_KEY, unique_key__in=keys)
    found = {job.unique_key: job for job in jobs}
    for job in found.values():
        job.deduplicated = True
    return found
