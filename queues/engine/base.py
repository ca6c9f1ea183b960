"""What the queue asks of its database, declared once (as Django's `sessions.backends.base`).

Each method is one act on the job tables, named for what it does; `postgresql.py` and `sqlite.py`
implement every one. SQL appears in those two modules only, each statement whole and named with a
line on what it is for.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from django.db import DEFAULT_DB_ALIAS
from django.utils.module_loading import import_string
from django_q.conf import Conf

if TYPE_CHECKING:
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

    # --- attempts: begin, finish, retry, cancel, counters, acknowledgement, liveness ----------

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
