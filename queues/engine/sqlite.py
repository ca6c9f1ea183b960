"""The storage engine on SQLite: no advisory locks, no data-modifying CTEs, no NOTIFY."""

from __future__ import annotations

from queues.engine.base import Engine


class SQLiteEngine(Engine):
    vendor = "sqlite"

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    # --- attempts: begin, finish, retry, cancel, counters, acknowledgement, liveness ----------

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------
