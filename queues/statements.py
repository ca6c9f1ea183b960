"""Several writes sent as one round trip: the others ride as data-modifying CTEs of the first.

A worker or a request that writes a job record, its counters and its broker row pays one round
trip instead of three on PostgreSQL. SQLite has no data-modifying CTEs: it gets them one by one.
"""

from django.db import connection
from django.db.models.sql import InsertQuery


def execute_together(statements):
    """Run `statements` in the caller's transaction; return the first one's rows, if it has any.

    A statement is (sql, params) or (sql, params, name): on PostgreSQL each after the first
    becomes a CTE of the first, named `name` (or `writeN`), so the first may read what another
    RETURNs; their own results are dropped. SQLite runs them one by one, the first last.
    """
    with connection.cursor() as cursor:
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


def insert_statement(instance, returning=None):
    """(sql, params) inserting a model instance as `save(force_insert=True)` would.

    For a model whose primary key is set in Python (a UUID): nothing needs reading back but the
    column named by `returning`, if any (a value an expression computed in the database).
    """
    sql, params = insert_rows_statement([instance])
    if returning:
        sql += f" RETURNING {connection.ops.quote_name(returning)}"
    return sql, params


def insert_rows_statement(instances):
    """(sql, params) inserting model instances of one model in one multi-row INSERT."""
    query = InsertQuery(type(instances[0]))
    query.insert_values(instances[0]._meta.local_concrete_fields, instances)
    ((sql, params),) = query.get_compiler(connection=connection).as_sql()
    return sql, params
