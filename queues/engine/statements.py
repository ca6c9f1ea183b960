"""Several writes sent as one round trip: the others ride as data-modifying CTEs of the first.

A worker or a request that writes a job record, its counters and its broker row pays one round
trip instead of three on PostgreSQL. SQLite has no data-modifying CTEs: it gets them one by one.
"""

from contextlib import contextmanager

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models.sql import InsertQuery

from queues.conf import conf
from queues.execution import tracing


def execute_together(statements):
    """Run `statements` in the caller's transaction; return the first one's rows, if it has any.

    A statement is (sql, params) or (sql, params, name): on PostgreSQL each after the first
    becomes a CTE of the first, named `name` (or `writeN`), so the first may read what another
    RETURNs; their own results are dropped. SQLite runs them one by one, the first last.
    """
    with hot_cursor() as cursor:
        if connection.vendor != "postgresql":
            for sql, params, *_ in reversed(statements):
                cursor.execute(sql, params)
        else:
            (main, main_params, *_), others = statements[0], statements[1:]
            ctes = ", ".join(
                f"{name[0] if name else f'write{i}'} AS ({sql})"
                for i, (sql, _, *name) in enumerate(others)
            )
            params = [p for _, ps, *_ in others for p in ps] + list(main_params)
            cursor.execute(f"WITH {ctes} {main}" if others else main, params)
        return cursor.fetchall() if cursor.description else None


# Runs of one statement text on a connection after which PostgreSQL keeps its plan.
PREPARE_AFTER = 5


@contextmanager
def hot_cursor(using=DEFAULT_DB_ALIAS):
    """A cursor for the statements a worker sends for every job (begin, work, outcome) and a
    pusher for every claim, on the connection `using`.

    Django's psycopg cursor quotes every parameter into the SQL text in Python, and PostgreSQL
    parses and plans each text anew. This one (PostgreSQL) sends the parameters apart, and a text
    run `PREPARE_AFTER` times on the connection is prepared: planned once per connection. Only
    constant texts should use it (psycopg keeps at most 100 prepared per connection). Django's
    own cursors never prepare (client-side binding), so nothing else changes. On SQLite, and while
    tracing is on (the psycopg instrumentation traces Django's cursors only), this is
    `connection.cursor()`, and so it is with `QUEUE_PREPARED_STATEMENTS` off (a connection through
    a transaction-mode pooler, where a statement prepared in one transaction may be gone in the
    next).

    One cursor per connection, reused and never closed: psycopg caches the adapter of each
    parameter type on its cursor, and looking them up again for every new cursor shows in a
    worker's CPU per job. Keyed on the connection object, not the wrapper: under Django's psycopg
    pool each checkout may hand the wrapper another connection, which gets its own cursor.
    """
    db = connections[using]
    if db.vendor != "postgresql" or tracing.enabled() or not conf.QUEUE_PREPARED_STATEMENTS:
        with db.cursor() as cursor:
            yield cursor
        return
    from django.db.backends.postgresql.base import ServerBindingCursor

    db.ensure_connection()
    pg = db.connection
    # Kept on Django's wrapper (one per thread) with the connection it belongs to: a new
    # connection (after a reconnect) gets a new cursor, and the old pair is dropped.
    owner, cursor = getattr(db, "_queues_hot_cursor", (None, None))
    if owner is not pg:
        if pg.prepare_threshold is None:  # Django's default: prepared statements off
            pg.prepare_threshold = PREPARE_AFTER
        cursor = ServerBindingCursor(pg)
        db._queues_hot_cursor = (pg, cursor)
    # Wrapped as Django wraps its own: database errors translated, queries logged when asked.
    yield db._prepare_cursor(cursor)


def forget_hot_cursor(db):
    """Drop the cursor `hot_cursor` keeps on the connection wrapper `db` (its connection is gone:
    `queues.engine.reconnect`), rather than keep the dead connection referenced until the next
    use."""
    db.__dict__.pop("_queues_hot_cursor", None)


def insert_statement(instance, returning=None):
    """(sql, params) inserting a model instance as `save(force_insert=True)` would.

    For a model whose primary key is set in Python (a UUID): nothing needs reading back but the
    column named by `returning`, if any (a value an expression computed in the database).
    """
    sql, params = insert_rows_statement([instance])
    if returning:
        sql += f" RETURNING {connection.ops.quote_name(returning)}"
    return sql, params


def insert_from_statement(instance, source):
    """(sql, params) inserting a model instance for each row of the CTE `source` (at most one, in
    practice): `insert_statement` as `INSERT ... SELECT <its values> FROM source`, so the row is
    stored only when `source` returned one."""
    sql, params = insert_rows_statement([instance])
    head, values = sql.split(" VALUES (", 1)
    if not values.endswith(")"):
        raise ValueError(f"not a one-row INSERT: {sql}")
    return f"{head} SELECT {values[:-1]} FROM {source}", params


def insert_rows_statement(instances):
    """(sql, params) inserting model instances of one model in one multi-row INSERT."""
    query = InsertQuery(type(instances[0]))
    query.insert_values(instances[0]._meta.local_concrete_fields, instances)
    ((sql, params),) = query.get_compiler(connection=connection).as_sql()
    return sql, params


def upsert_statement(instance, conflict: str) -> tuple[str, list]:
    """(sql, params) inserting a model instance as `insert_statement`, or, when a row with the
    same `conflict` column exists, setting that row's other columns to the instance's values."""
    sql, params = insert_statement(instance)
    quote = connection.ops.quote_name
    updates = ", ".join(
        f"{quote(f.column)} = excluded.{quote(f.column)}"
        for f in instance._meta.concrete_fields
        if not f.primary_key
    )
    return f"{sql} ON CONFLICT ({quote(conflict)}) DO UPDATE SET {updates}", params
