"""What the queue asks of its database, declared once (as Django's `sessions.backends.base`).

Each method is one act on the job tables, named for what it does; `postgresql.py` and `sqlite.py`
implement every one. SQL appears in those two modules only, each statement whole and named with a
line on what it is for.
"""

from __future__ import annotations


class Engine:
    """The storage engine's interface. Methods raise NotImplementedError until implemented."""

    vendor: str = ""

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    # --- attempts: begin, finish, retry, cancel, counters, acknowledgement, liveness ----------

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------
