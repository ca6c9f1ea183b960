"""Threads for tests, whose failures fail the test instead of vanishing with the thread."""

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def in_a_thread(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """Start `fn(*args)` on a thread and a database connection of its own.

    The returned `join()` waits for it and returns its result, or re-raises what it raised; a
    thread still running after `timeout` seconds fails the test.
    """
    outcome: dict[str, Any] = {}

    def run():
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # re-raised by join()
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float = 30) -> Any:
        thread.join(timeout)
        assert not thread.is_alive(), f"{fn.__name__} still running after {timeout} s"
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    join.thread = thread  # type: ignore[attr-defined]
    return join


def in_other_connection(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` on a thread and a database connection of its own; return its result."""
    return in_a_thread(fn, *args)()


def in_threads(fn: Callable[[], Any], count: int, timeout: float = 60) -> list[Any]:
    """Run `fn` on `count` threads at once (each with its own connection); return their results.

    The first exception any of them raised is re-raised here.
    """
    joins = [in_a_thread(fn) for _ in range(count)]
    return [join(timeout) for join in joins]
