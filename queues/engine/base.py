"""What the queue asks of its database, declared once (as Django's `sessions.backends.base`).

Each method is one act on the job tables, named for what it does; `postgresql.py` and `sqlite.py`
implement every one. SQL appears in those two modules only, each statement whole and named with a
line on what it is for.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

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

    def begin(
        self, job_id: UUID | str, *, now: datetime, due: datetime, worker: str
    ) -> tuple[bool, Job | None]:
        """(whether this delivery may act on the job, the job begun if it was waiting and due)."""
        raise NotImplementedError

    def commit_asynchronously(self) -> None:
        """Let this transaction commit without waiting for the disk, where a crash cannot tell."""
        raise NotImplementedError

    def lock_for_attempt(self, job_id: UUID | str, now: datetime) -> tuple[bool, Job | None]:
        """(whether this delivery may act on the job, the job locked for update or None)."""
        raise NotImplementedError

    def release(self, job_id: UUID | str) -> None:
        """Give back the liveness lock of `job_id` that this connection took."""
        raise NotImplementedError

    def release_if_connected(self, job_id: UUID | str) -> None:
        """`release` on a path that recorded nothing, unless the connection (its lock) is gone."""
        raise NotImplementedError

    # The same on both databases (the ORM, `push`, `counters`): implemented here.

    def redeliver(self, job: Job) -> None:
        """Give `job` a new broker row and store its id on the job record."""
        from queues.django_q2.push import push
        from queues.models import Job

        Job.objects.filter(pk=job.pk).update(broker_row=push(job))

    def count_started(self, job: Job) -> None:
        """Count the start of an attempt of the waiting `job`."""
        from queues.engine import counters

        counters.attempt_started(job)

    def count_lost(self, job: Job, *, final: bool) -> None:
        """Count the attempt of a `running` job whose worker is gone; `final`: the job failed."""
        from queues.engine import counters

        counters.worker_lost(job, final=final)

    def finish(
        self, job: Job, fields: dict[str, Any], seconds: float = 0.0, *, own_attempt: bool = True
    ) -> bool:
        """Record `fields` if `job`'s attempt is current, with counters and ack; whether it was."""
        raise NotImplementedError

    def cancel_query(self) -> bool:
        """Cancel the statement this connection is running, if any; whether there was one."""
        raise NotImplementedError

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------
