"""The storage engine: the one home of the queue's SQL and of the PostgreSQL/SQLite difference.

`queues.engine.base.Engine` declares what the rest of the queue asks of its database;
`postgresql.PostgreSQLEngine` and `sqlite.SQLiteEngine` implement it. Callers never branch on the
database: they ask `engine()` for the one that serves a connection.
"""

from django.db import DEFAULT_DB_ALIAS, connections

from queues.engine.base import Engine

__all__ = ["Engine", "engine"]

_engines: dict[str, Engine] = {}


def engine(using: str = DEFAULT_DB_ALIAS) -> Engine:
    """The engine of the database `using` (one instance per vendor, shared by every caller)."""
    vendor = connections[using].vendor
    found = _engines.get(vendor)
    if found is None:
        engine_class: type[Engine]
        if vendor == "postgresql":
            from queues.engine.postgresql import PostgreSQLEngine

            engine_class = PostgreSQLEngine
        elif vendor == "sqlite":
            from queues.engine.sqlite import SQLiteEngine

            engine_class = SQLiteEngine
        else:
            raise NotImplementedError(f"queues has no storage engine for {vendor!r}")
        found = _engines[vendor] = engine_class()
    return found
