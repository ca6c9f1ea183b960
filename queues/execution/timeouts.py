"""Stopping a handler that runs past its timeout (its job's, its type's or its queue's).

A timer (SIGALRM, in the main thread of a worker process) raises `JobTimeout` in the handler's
Python code. A handler waiting on a database query cannot be interrupted there: the query is
cancelled instead (`Engine.cancel_query`), the server stops it and drops its locks, and the
handler sees it fail, which is then reported as `JobTimeout`. An `async def` handler's coroutine
is cancelled on its event loop instead (`queues.execution.coroutines`), and ends with `JobTimeout`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from django.db import connection

from queues.engine import engine
from queues.errors import JobTimeout
from queues.execution import coroutines


@contextmanager
def handler_timeout(seconds: float) -> Iterator[None]:
    """Stop the handler after `seconds` (main thread of a worker process only).

    Python code gets `JobTimeout` raised in it. A running query is cancelled instead, and its
    failure becomes `JobTimeout` once the transaction has rolled back cleanly.
    """
    started = time.monotonic()

    def expire(signum: int, frame: FrameType | None) -> None:
        timeout = JobTimeout(f"job exceeded its timeout of {seconds:g}s")
        # A coroutine's thread waits for its loop: cancel both its query and its task, never
        # raise here (its loop would run on, unwatched).
        if engine().cancel_query() | coroutines.stop_running(timeout):
            signal.setitimer(signal.ITIMER_REAL, 1)  # again, should the query have just ended
            return
        raise timeout

    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # not the main thread: django-q2's guard is the only limit
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except Exception as exc:
        if was_cancelled(exc) and time.monotonic() - started >= seconds:
            raise JobTimeout(
                f"job exceeded its timeout of {seconds:g}s; its query was cancelled"
            ) from exc
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def was_cancelled(exc: BaseException) -> bool:
    """A PostgreSQL `query_canceled` error (SQLSTATE 57014), as Django wraps it."""
    return getattr(exc.__cause__, "sqlstate", None) == "57014"


def discard_connection_if_busy() -> None:
    """After a timeout: the timer may have interrupted Python code that was using the connection,
    which is then closed rather than reused in an unknown state."""
    in_use = connection.connection is not None and not connection.in_atomic_block
    if in_use and not connection.is_usable():
        connection.close()
