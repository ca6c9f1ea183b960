"""The storage engine on PostgreSQL: every statement the queue sends there, whole and named."""

from __future__ import annotations

from queues.engine.base import Engine


class PostgreSQLEngine(Engine):
    vendor = "postgresql"

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    # --- attempts: begin, finish, retry, cancel, counters, acknowledgement, liveness ----------

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------
