"""Functions that test schedules run in real clusters (tests/queues/test_schedules.py): each leaves
a mark in the cache (a table of the test database) or fails."""

from django.core.cache import cache


def mark(name):
    cache.set(f"schedule-ran:{name}", True, 600)


def has_run(name):
    return cache.get(f"schedule-ran:{name}", False)


def fail():
    raise RuntimeError("a scheduled function that fails")


def mark_periodic():
    """A function a `func` entry of QUEUE_SCHEDULES calls."""
    mark("periodic")
