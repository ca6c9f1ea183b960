"""Storing jobs in one statement: many at once (`enqueue_many`), and unique ones deduplicated.

On PostgreSQL one round trip stores the records, their broker rows (with the NOTIFY) and the
counters, for the jobs actually inserted: `INSERT ... ON CONFLICT DO NOTHING` on the unique index
(`queues.uniqueness`) skips a duplicate, and the broker rows and counters are built from what
that INSERT returns, so a duplicate gets neither. Only a duplicate costs a second round trip, to
read the job holding its key. SQLite stores job by job: its writers take turns (IMMEDIATE
transactions), so looking for the holder first is race-free there.
"""

from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.models import BooleanField
from django.db.models.expressions import RawSQL

from queues import counters, uniqueness
from queues.models import Job
from queues.push import broker_in_database, next_row_id_sql, push, push_many_statement
from queues.statements import execute_together, insert_rows_statement

# A holder found finishing between the INSERT and the read frees its key: try again, a few times.
ROUNDS = 3
# Jobs per statement: a bigger batch takes several statements, in the same transaction.
ROWS_PER_STATEMENT = 500


def store(kind, jobs):
    """Store `jobs` (new, validated Job instances of `kind`) in the caller's transaction.

    Returns, in order, each stored job or, for a duplicate, the job holding its unique key, with
    `deduplicated` set. Jobs of one batch with the same key get one job (the first).
    """
    for job in jobs:
        job.unique_key = uniqueness.key_of(kind, job.data)
        job.unique_states = uniqueness.states_mask(kind)
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


def _insert(kind, jobs):
    """Insert those of `jobs` whose unique key is free; return their ids."""
    if connection.vendor != "postgresql":
        return _insert_one_by_one(kind, jobs)
    stored = set()
    for start in range(0, len(jobs), ROWS_PER_STATEMENT):
        stored |= _insert_together(kind, jobs[start : start + ROWS_PER_STATEMENT])
    return stored


def _insert_together(kind, jobs):
    in_database = broker_in_database()
    for job in jobs:
        job.broker_row = RawSQL(next_row_id_sql(), []) if in_database else None
    insert, params = insert_rows_statement(jobs)
    if kind.unique:
        insert += f" ON CONFLICT (unique_key) WHERE {uniqueness.INDEX_PREDICATE} DO NOTHING"
    statements = [
        ("SELECT id, broker_row FROM stored", []),
        (f"{insert} RETURNING id, broker_row", params, "stored"),
        (*counters.jobs_enqueued_sql(kind.queue, kind.name, "stored"), "counted"),
    ]
    if in_database:
        statements.append((*push_many_statement(jobs, "stored"), "broker_rows"))
    rows = dict(execute_together(statements))
    for job in jobs:
        if job.pk in rows:
            job.broker_row = rows[job.pk]
            job._state.adding, job._state.db = False, DEFAULT_DB_ALIAS  # as `save()` leaves it
        if not in_database and job.pk in rows:
            push(job)  # a broker outside the database (Redis): after the commit
    return set(rows)


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
    holding = RawSQL(uniqueness.INDEX_PREDICATE, [], BooleanField())
    jobs = Job.objects.alias(holding=holding).filter(unique_key__in=keys, holding=True)
    found = {job.unique_key: job for job in jobs}
    for job in found.values():
        job.deduplicated = True
    return found
