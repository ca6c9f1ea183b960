"""Progress a running handler reports (`RunningJob.report_progress`, BullMQ's `updateProgress`).

A percentage (0-100) and a short message, written to the job record at once in a statement of
its own, fenced by attempt (`Engine.report_progress`): on PostgreSQL outside the handler's
transaction, so the record, its API and the dashboard show it while the handler runs and it stays
if the work rolls back. SQLite lets one writer at a time in, and the handler's transaction is that
writer: there the report joins it, and the attempt's outcome writes the last report again, so a
failed attempt keeps it too. The message is output: shown like the job's result
(`JobType.output_is_content`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError

from queues.engine import engine
from queues.errors import is_seconds

if TYPE_CHECKING:
    from queues.models import Job

logger = logging.getLogger("queues.runner")

# The longest progress message (`Job.progress_message`).
MESSAGE_LENGTH = 200

Reporter = Callable[..., bool]


def reporter(job: Job) -> Reporter:
    """`report_progress(percent=None, message=None)` for the running attempt of `job`."""

    def report_progress(percent: float | None = None, message: str | None = None) -> bool:
        """Record how far the handler got: `percent` (0-100) and/or a short `message`; what is
        not given keeps its last value. Whether it was written (False: the attempt is no longer
        the job's current one, or the database did not take it; the handler goes on)."""
        if percent is None and message is None:
            raise TypeError("report_progress takes a percent, a message or both")
        if percent is not None and not (is_seconds(percent) and percent <= 100):
            raise ValueError(f"progress must be a number from 0 to 100, not {percent!r}")
        if message is not None and (not isinstance(message, str) or len(message) > MESSAGE_LENGTH):
            raise ValueError(f"a progress message is a string of at most {MESSAGE_LENGTH} chars")
        if percent is not None:
            job.progress = float(percent)
        if message is not None:
            job.progress_message = message
        try:
            return engine().report_progress(job)
        except DatabaseError as exc:  # progress is a report: the work goes on
            logger.warning("progress not recorded: %s", exc.__class__.__name__)
            return False

    return report_progress


@contextmanager
def reporting(job: Job) -> Iterator[Reporter]:
    """`reporter(job)` for the handler of an attempt; what it opened is closed as it ends."""
    try:
        yield reporter(job)
    finally:
        engine().end_progress_reports()


def outcome_fields(job: Job) -> dict[str, Any]:
    """What an attempt's outcome writes of its progress: the last report, if the job has one (the
    handler's transaction may have rolled it back); nothing for a job that never reported."""
    if job.progress is None and not job.progress_message:
        return {}
    return {"progress": job.progress, "progress_message": job.progress_message}
