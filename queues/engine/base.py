"""What the queue asks of its database, declared once (as Django's `sessions.backends.base`).

Each method is one act on the job tables, named for what it does; `postgresql.py` and `sqlite.py`
implement every one. SQL appears in those two modules only, each statement whole and named with a
line on what it is for.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS
from django.utils.module_loading import import_string
from django_q.conf import Conf

from queues.django_q2 import payload as payloads
from queues.django_q2.push import hand_over_after_commit

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from queues.core.registry import JobType
    from queues.models import ClusterHeartbeat, Job


class Claimed(NamedTuple):
    """What one claim of broker rows returns."""

    # (row id, payload) of each row claimed, oldest first.
    tasks: list[tuple[int, str]]
    # When the queue's next row falls due (None: none waits, or the engine cannot tell).
    next_due: datetime | None
    # Whether the queue needs a rescue (asked only with `rescue_late`).
    rescue_needed: bool


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

    def replace_waiting(self, holder: Job, duplicate: Job) -> bool:
        """Give the unique key's `holder` the data (and subject) of `duplicate` if it still waits
        (queued or retrying); whether it did. `Unique(on_conflict="replace")`."""
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

    def keeps_content_about(self, subject: str, job_types: list[str]) -> bool:
        """Whether a job record of one of `job_types` is about `subject` (content to erase)."""
        from queues.models import Job

        return Job.objects.filter(subject=subject, job_type__in=job_types).exists()

    def keeps_content_about_sql(self, subject: str, job_types: list[str]) -> tuple[str, list]:
        """(a boolean SQL expression, its parameters): `keeps_content_about` as a condition for
        the caller's own statement, which so asks it without a round trip of its own."""
        from queues.models import Job

        jobs = Job.objects.filter(subject=subject, job_type__in=job_types).values("pk")[:1]
        sql, params = jobs.query.sql_with_params()
        return f"EXISTS ({sql})", list(params)

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

    def push(self, job: Job) -> int | None:
        """Give `job` a broker row due at its `run_after`; the row's id. On the database broker
        it is stored in the caller's transaction; a broker outside the database (Redis) gets it
        once that commits (`queues.django_q2.push`), and the id is None."""
        if not self.broker_in_database():
            hand_over_after_commit(job)
            return None
        return self.store_broker_row(
            job.queue, payloads.payload(job), job.run_after, payloads.priority(job), using=Conf.ORM
        )

    def redeliver(self, job: Job) -> None:
        """Give `job` a new broker row and store its id on the job record."""
        from queues.models import Job

        Job.objects.filter(pk=job.pk).update(broker_row=self.push(job))

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

    def report_progress(self, job: Job) -> bool:
        """Write `job.progress` and `progress_message` if its attempt is current, at once (outside
        the handler's transaction where the database allows); whether it was."""
        raise NotImplementedError

    def end_progress_reports(self) -> None:
        """Close what `report_progress` opened for the attempt that has ended (nothing here)."""

    def cancel_query(self) -> bool:
        """Cancel the statement this connection is running, if any; whether there was one."""
        raise NotImplementedError

    # --- broker rows: push, claim, hand back, notify; rescue; heartbeats; pause state ---------

    def broker_in_database(self) -> bool:
        """Whether the configured broker keeps its rows in our database (and joins transactions)."""
        from django_q.brokers.orm import ORM  # its models need the app registry

        broker_class = import_string(Conf.BROKER_CLASS) if Conf.BROKER_CLASS else ORM
        return getattr(broker_class, "joins_transactions", True)

    def claim(
        self,
        queue: str,
        by_priority: int,
        oldest: int,
        *,
        token: int | None = None,
        rescue_late: datetime | None = None,
        using: str = DEFAULT_DB_ALIAS,
    ) -> Claimed:
        """Claim due rows of `queue` unless it is paused: `by_priority` by priority, then
        `oldest` oldest first, for the pusher of `token`; with `rescue_late`, also ask
        `rescue_needed`."""
        raise NotImplementedError

    def take_claims_token(self, using: str = DEFAULT_DB_ALIAS) -> int | None:
        """The token a pusher's claims carry while its connection `using` lives (or None)."""
        raise NotImplementedError

    def wait_for_rows(
        self, queue: str, next_due: datetime | None, longest: float, using: str = DEFAULT_DB_ALIAS
    ) -> None:
        """Return when a row of `queue` may have become claimable, within `longest` seconds."""
        raise NotImplementedError

    def stop_waiting(self, using: str = DEFAULT_DB_ALIAS) -> None:
        """Close what `wait_for_rows` kept open in this process (its connection was lost)."""
        raise NotImplementedError

    def notify(self, queue: str, using: str = DEFAULT_DB_ALIAS) -> None:
        """Wake the idle pushers of `queue` when the caller's transaction commits."""
        raise NotImplementedError

    def hand_back(self, queue: str, row_ids: list[int], using: str = DEFAULT_DB_ALIAS) -> None:
        """Make claimed rows of `queue` claimable again now, in their place in the queue."""
        raise NotImplementedError

    def delete_row(self, row_id: int, using: str = DEFAULT_DB_ALIAS) -> None:
        """Delete one broker row (the monitor's acknowledgement), in one statement."""
        raise NotImplementedError

    def delete_row_statement(self, row_id: int) -> tuple[str, list]:
        """(sql, params) deleting one broker row, for a caller to send with other statements."""
        raise NotImplementedError

    def claimed_rows(self, queue: str, using: str = DEFAULT_DB_ALIAS) -> int:
        """How many rows of `queue` are claimed and not acknowledged yet."""
        raise NotImplementedError

    def free_dead_claims(self, queue: str, using: str = DEFAULT_DB_ALIAS) -> int:
        """Make the rows of `queue` that dead clusters claimed claimable again; how many."""
        raise NotImplementedError

    def rescue_needed(self, queue: str, now: datetime, late: datetime) -> bool:
        """Whether a rescue of `queue` has anything to do (True where it cannot be told)."""
        raise NotImplementedError

    def take_rescue_lock(self, queue: str) -> bool:
        """Whether this transaction may rescue `queue` (no other cluster is rescuing it)."""
        raise NotImplementedError

    def lost_attempts(self, queue: str, limit: int) -> list[Job]:
        """Up to `limit` `running` jobs of `queue` whose worker is gone, oldest started first."""
        raise NotImplementedError

    def stranded_jobs(self, queue: str, now: datetime, late: datetime, limit: int) -> list[Job]:
        """Up to `limit` due waiting jobs of `queue` whose delivery is lost, earliest due first."""
        raise NotImplementedError

    def write_heartbeat(self, beat: ClusterHeartbeat) -> None:
        """Insert or replace the heartbeat row of a cluster, in one statement."""
        raise NotImplementedError
