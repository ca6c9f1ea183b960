"""What the queue asks of its database, declared once (as Django's `sessions.backends.base`).

Each method is one act on the job tables, named for what it does; `postgresql.py` and `sqlite.py`
implement every one. SQL appears in those two modules only, each statement whole and named with a
line on what it is for.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from queues.core.registry import JobType
    from queues.models import Job


class Engine:
    """The storage engine's interface. Methods raise NotImplementedError until implemented."""

    vendor: str = ""

    # --- storing jobs: enqueue, enqueue_if, enqueue_many, operator retries -------------------

    def store(self, kind: JobType, jobs: list[Job]) -> list[Job]:
        """Store new, validated jobs of `kind` with their broker rows and counters, in the
        caller's transaction: each job in order or, for a duplicate of a unique type, the job
        holding its key (`deduplicated` set). `enqueue_many`."""
        raise NotImplementedError

    def store_job(self, kind: JobType, job: Job) -> Job:
        """`store` for one job, as cheaply as the database allows. `enqueue`."""
        raise NotImplementedError

    def store_if(
        self, kind: JobType, job: Job, update: QuerySet, values: dict[str, Any]
    ) -> Job | None:
        """`update.update(**values)` (at most one row) and, only if it changed a row, `store` the
        job, atomically: the job (or its key's holder), or None and nothing stored. `enqueue_if`."""
        raise NotImplementedError

    def store_broker_row(
        self,
        queue: str,
        payload: str,
        run_after: datetime,
        priority: int = 0,
        using: str = DEFAULT_DB_ALIAS,
    ) -> int:
        """Insert a database broker row of `queue` due at `run_after`, in the caller's
        transaction; its id. The database broker's pushers learn of it (at commit)."""
        raise NotImplementedError

    def store_retry(self, job: Job) -> bool:
        """Store a failed `job` sent back to its queue by an operator (its fields set for a fresh
        start) with a new broker row, counted; False, nothing changed, if its unique key is held."""
        raise NotImplementedError

    def cancel_waiting(self, jobs: QuerySet, queue: str, job_type: str) -> int:
        """Cancel those of `jobs` (of `queue` and `job_type`) that wait, with their counters, in
        the caller's transaction; how many."""
        raise NotImplementedError

    # --- attempts: begin, finish, retry, cancel, counters, acknowledgement, liveness ----------

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------
