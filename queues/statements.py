"""Several writes sent as one round trip: the others ride as data-modifying CTEs of the first.

A worker or a request that writes a job record, its counters and its broker row pays one round
trip instead of three on PostgreSQL. SQLite has no data-modifying CTEs: it gets them one by one.
"""

from django.db import connection
from django.db.models.sql import InsertQuery


def execute_together(statements):
    """Run `statements` ((sql, params) pairs) in the caller's transaction; the first one's rows.

    The first statement's result is returned (fetched when it has one); the others' are dropped,
    so they must not need reading (a RETURNING with side effects belongs in the first).
    """
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            # The first one last, so its result is the cursor's.
            for sql, params in reversed(statements):
                cursor.execute(sql, params)
        else:
            (main, main_params), others = statements[0], statements[1:]
            ctes = ", ".join(f"write{i} AS ({sql})" for i, (sql, _) in enumerate(others))
            params = [p for _, ps in others for p in ps] + list(main_params)
            cursor.execute(f"WITH {ctes} {main}" if others else main, params)
        return cursor.fetchall() if cursor.description else None


def insert_statement(instance):
    """(sql, params) inserting a model instance as `save(force_insert=True)` would, no RETURNING.

    For a model whose primary key is set in Python (a UUID): nothing needs to be read back.
    """
    query = InsertQuery(type(instance))
    query.insert_values(instance._meta.local_concrete_fields, [instance])
    ((sql, params),) = query.get_compiler(connection=connection).as_sql()
    return sql, params
