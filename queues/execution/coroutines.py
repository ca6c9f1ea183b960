"""Running an `async def` handler (or `@task`) to completion in a worker.

The worker is synchronous: a coroutine runs through asgiref's `async_to_sync`, on an event loop
of its own thread, while the worker's thread waits and runs whatever the coroutine hands back
to it with `sync_to_async` (thread-sensitive, the default, as Django's async ORM methods
`aget`, `acreate`... do). So the handler's queries run on the worker's connection, inside the
attempt's transaction: they commit with the job's success or roll back with its failure, as a
synchronous handler's do. A query made directly from the coroutine raises Django's
`SynchronousOnlyOperation`, as it would in an async view.

The queue's timeout reaches a coroutine through `stop_running`: the timer cancels its task on
its loop (the worker's thread only waits, so nothing may be raised there), and the attempt ends
with the timer's error. A coroutine that blocks its loop (a `time.sleep` in `async def`) cannot
be cancelled; django-q2's guard stops its worker, as for a synchronous handler stuck in C code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any, TypeVar

from asgiref.sync import async_to_sync

T = TypeVar("T")


class _Run:
    """One coroutine's run: its loop and task once started, and why it was stopped, if it was."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.stopped_by: BaseException | None = None


# The coroutine this worker process runs now (one at a time, like its handlers).
_current: _Run | None = None


def run(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` from this synchronous thread and return its result (or raise its error).

    A stop (`stop_running`) ends it with the error given there, even if the coroutine swallowed
    its cancellation; `asyncio.CancelledError` never escapes as such.
    """
    global _current
    state = _Run()

    async def supervised() -> T:
        state.loop, state.task = asyncio.get_running_loop(), asyncio.current_task()
        try:
            if state.stopped_by is not None:  # stopped before it started
                raise asyncio.CancelledError()
            result = await awaitable
        except BaseException as exc:  # after a stop, whatever it ended with is the stop's doing
            if state.stopped_by is not None:
                cause = None if isinstance(exc, asyncio.CancelledError) else exc
                raise state.stopped_by from cause
            raise
        if state.stopped_by is not None:
            raise state.stopped_by
        return result

    previous, _current = _current, state
    try:
        return async_to_sync(supervised)()
    finally:
        _current = previous
        if hasattr(awaitable, "close"):  # never started (a stop came first): no warning
            awaitable.close()  # type: ignore[attr-defined]


def stop_running(error: BaseException) -> bool:
    """Cancel the coroutine running now, to end with `error`; whether one was running.

    Safe from a signal handler: the cancellation is handed to the coroutine's loop.
    """
    state = _current
    if state is None:
        return False
    state.stopped_by = state.stopped_by or error
    loop, task = state.loop, state.task
    if loop is not None and task is not None:
        # RuntimeError: its loop has just closed, the run is ending anyway.
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(task.cancel)
    return True
