"""`@task` functions that exist only in tests, run by real clusters
(tests/queues/test_task_backend.py).

Workers import this module when they resolve a task's path; its signal receivers then log each
`task_started` / `task_finished` they see, for the tests to read in the cluster's log.
"""

import logging
import time

from django.db import OperationalError
from django_tasks import task
from django_tasks.signals import task_finished, task_started

from queues.errors import PermanentJobError, Snooze, SubjectGone

logger = logging.getLogger("tests.tasks")


@task
def add(a, b):
    return {"sum": a + b}


@task
async def add_later(a, b):
    return a + b


@task
def snoozes(seconds):
    """Never ready: snoozes for `seconds` every time."""
    raise Snooze(seconds)


@task(takes_context=True)
def flaky(context, fail_times):
    """Fails with a transient database error on its first `fail_times` attempts."""
    if context.attempt <= fail_times:
        raise OperationalError(f"simulated outage on attempt {context.attempt}")
    return context.attempt


@task(takes_context=True)
async def fetch_flaky(context, fail_times):
    """An async task whose host is unreachable (`ConnectionError`) on its first `fail_times`
    attempts."""
    if context.attempt <= fail_times:
        raise ConnectionError(f"simulated unreachable host on attempt {context.attempt}")
    return context.attempt


@task(takes_context=True)
def fails_once(context):
    """Fails for good on its first attempt; succeeds when an operator retries it."""
    if context.attempt == 1:
        raise PermanentJobError("simulated failure that an operator can retry")
    return context.attempt


@task
def tagged(tag):
    return tag


@task
def sleepy(seconds):
    time.sleep(seconds)


@task
def fails_saying(words):
    """Fails for good with `words` in its error, as a task's own code may."""
    raise PermanentJobError(f"could not handle {words}")


@task
def about_nothing(secret):
    """What it is about is gone: fails at once, and its arguments are erased with the failure."""
    raise SubjectGone("the task's subject is gone")


def not_a_task():
    return None


def _log_signal(name):
    def receiver(sender, task_result, **kwargs):
        result = task_result
        logger.info("signal %s %s %s attempts=%s", name, result.id, result.status, result.attempts)

    return receiver


task_started.connect(_log_signal("task_started"), weak=False, dispatch_uid="tests.task_started")
task_finished.connect(_log_signal("task_finished"), weak=False, dispatch_uid="tests.task_finished")
