"""Job types that exist only in tests: they fail, hang or kill their worker on purpose.

Loaded by test clusters through `JOB_TYPE_MODULES`.
"""

import asyncio
import os
import signal
import time
from datetime import timedelta

from django.db import OperationalError
from django.utils import timezone
from rest_framework import serializers

from chat.models import Conversation
from queues.api import (
    JobData,
    PermanentJobError,
    RetryPolicy,
    TransientJobError,
    Unique,
    UserlessJobData,
    araise_if_stop_requested,
    raise_if_stop_requested,
)
from queues.api import job_type as register


class TestData(JobData):
    fail_times = serializers.IntegerField(min_value=0, default=0)
    seconds = serializers.FloatField(min_value=0, default=0)


# No jitter: tests time its retries to the second.
@register("test_flaky", queue="database", schema=TestData, retry=RetryPolicy(jitter=0))
def flaky(data, job):
    """Fails with a transient database error on the first `fail_times` attempts."""
    attempts = job.attempt
    if attempts <= data["fail_times"]:
        raise OperationalError(f"simulated outage on attempt {attempts}")
    return {"attempt": attempts}


@register("test_permanent", queue="database", schema=TestData)
def permanent(data):
    raise PermanentJobError("simulated bad data")


@register(
    "test_poison",
    queue="database",
    schema=TestData,
    retry=RetryPolicy(attempts=3, backoff_seconds=0.1),
)
def poison(data):
    os.kill(os.getpid(), signal.SIGKILL)


@register("test_sleep", queue="database", schema=TestData, client_enqueueable=True)
def sleep(data):
    time.sleep(data["seconds"])
    return {"slept": data["seconds"]}


@register("test_fails_once", queue="database", schema=TestData)
def fails_once(job):
    """Fails for good on its first attempt; succeeds when an operator retries it."""
    if job.attempt == 1:
        raise PermanentJobError("simulated failure that an operator can retry")
    return {"attempt": job.attempt}


@register(
    "test_stuck",
    queue="database",
    schema=TestData,
    retry=RetryPolicy(attempts=2, backoff_seconds=0.1),
)
def stuck(data):
    """Hangs where the runner's SIGALRM cannot reach it, like a handler stuck in C code."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        time.sleep(data["seconds"])
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    return {"slept": data["seconds"]}


class StoppableData(TestData):
    note = serializers.CharField(required=False, max_length=200)


@register("test_stoppable", queue="database", schema=StoppableData, content_fields=["note"])
def stoppable(data):
    """Writes a conversation, then works for `seconds`, checking for a stop request as it goes:
    a stopped run leaves no conversation behind. `note` is user content."""
    Conversation.objects.create(owner_id=data["user_id"], title="written by test_stoppable")
    deadline = time.monotonic() + data["seconds"]
    while time.monotonic() < deadline:
        raise_if_stop_requested()
        time.sleep(0.02)
    raise_if_stop_requested()
    return {"slept": data["seconds"]}


class NamedTestData(TestData):
    name = serializers.CharField(max_length=100)


@register(
    "test_unique",
    queue="database",
    schema=NamedTestData,
    client_enqueueable=True,
    priority=2,
    unique=Unique(fields=["name"]),
)
def unique(data):
    """One live job per `name`; claimed after priorities 0 and 1."""
    time.sleep(data["seconds"])
    return {"name": data["name"]}


@register(
    "test_once_per_window",
    queue="database",
    schema=NamedTestData,
    unique=Unique(fields=["name"], period=timedelta(minutes=10)),
)
def once_per_window(data):
    """One job per `name` and 10-minute window, whatever became of it."""
    return {"name": data["name"]}


@register(
    "test_latest_data",
    queue="database",
    schema=NamedTestData,
    unique=Unique(fields=["name"], states=["queued"], on_conflict="replace"),
)
def latest_data(data):
    """One job per `name` waiting to start, which runs with the data of the latest enqueue."""
    return {"name": data["name"], "seconds": data["seconds"]}


@register(
    "test_debounced",
    queue="database",
    schema=NamedTestData,
    unique=Unique(fields=["name"], states=["queued"]),
)
def debounced(data):
    """One job per `name` waiting to start; another may wait while one runs."""
    return {"name": data["name"]}


# Retried quickly, at a fixed pace: the tests that use them wait for their retries.
QUICK_RETRIES = RetryPolicy(backoff_seconds=0.2, jitter=0)


@register("test_async_write", queue="database", schema=TestData, retry=QUICK_RETRIES)
async def async_write(data, job):
    """An `async def` handler: writes a conversation through the async ORM, reports progress,
    waits `seconds` (checking for a stop request), then fails with a bug on the first
    `fail_times` attempts, so that attempt's conversation rolls back."""
    conversation = await Conversation.objects.acreate(
        owner_id=data["user_id"], title=f"written by async attempt {job.attempt}"
    )
    await job.areport_progress(50, "conversation written")
    await asyncio.sleep(data["seconds"])
    await araise_if_stop_requested()
    if job.attempt <= data["fail_times"]:
        raise RuntimeError(f"simulated bug on attempt {job.attempt}")
    return {"conversation_id": conversation.pk, "attempt": job.attempt}


@register(
    "test_async_blocking",
    queue="database",
    schema=TestData,
    retry=RetryPolicy(attempts=2, backoff_seconds=0.1),
)
async def async_blocking(data):
    """Blocks its event loop (`time.sleep` in a coroutine), where no cancellation reaches it."""
    time.sleep(data["seconds"])
    return {"slept": data["seconds"]}


@register("test_unreachable", queue="database", schema=TestData, retry=QUICK_RETRIES)
def unreachable(job):
    """Fails as an HTTP client does when its host is unreachable (`ConnectionError`, an
    `OSError`) on the first `fail_times` attempts."""
    if job.attempt <= job.data["fail_times"]:
        raise ConnectionError(f"simulated unreachable host on attempt {job.attempt}")
    return {"attempt": job.attempt}


@register(
    "test_gives_up",
    queue="database",
    schema=TestData,
    retry=RetryPolicy(backoff_seconds=0.2, jitter=0, dont_autoretry_for=(ValueError,)),
)
def gives_up(job):
    """Raises `ValueError`, which its type declares never worth a retry, on the first
    `fail_times` attempts; any other error of it would be retried."""
    if job.attempt <= job.data["fail_times"]:
        raise ValueError(f"simulated bad input on attempt {job.attempt}")


class PeriodicTestData(UserlessJobData):
    fail_times = serializers.IntegerField(min_value=0, default=0)


@register(
    "test_periodic",
    queue="database",
    schema=PeriodicTestData,
    retry=RetryPolicy(attempts=3, backoff_seconds=0.5),
)
def periodic(data, job):
    """Fired by `QUEUE_SCHEDULES` in tests: fails as a transient error on the first `fail_times`
    attempts."""
    if job.attempt <= data["fail_times"]:
        raise TransientJobError(f"simulated outage of a periodic job on attempt {job.attempt}")
    return {"attempt": job.attempt}


class SnoozingData(TestData):
    ready_after = serializers.FloatField(min_value=0, default=0)
    snooze_seconds = serializers.FloatField(min_value=0, default=0.5)


@register("test_snoozing", queue="database", schema=SnoozingData)
def snoozing(data, job):
    """Not ready until `ready_after` seconds after its enqueue: until then it writes a
    conversation (rolled back with the snooze) and snoozes for `snooze_seconds`."""
    if timezone.now() < job.created_at + timedelta(seconds=data["ready_after"]):
        Conversation.objects.create(owner_id=data["user_id"], title="written by a snoozed run")
        job.snooze(data["snooze_seconds"])
    return {"attempt": job.attempt}


class ProgressData(TestData):
    steps = serializers.IntegerField(min_value=1, max_value=100, default=4)
    fail_after = serializers.IntegerField(min_value=1, required=False)


@register("test_progress", queue="database", schema=ProgressData)
def progressing(data, job):
    """`steps` steps of `seconds` each, reporting after each; fails for good after step
    `fail_after`, if given."""
    for step in range(1, data["steps"] + 1):
        time.sleep(data["seconds"])
        job.report_progress(100 * step / data["steps"], f"step {step} of {data['steps']}")
        if step == data.get("fail_after"):
            raise PermanentJobError(f"simulated failure after step {step}")
    return {"steps": data["steps"]}


@register(
    "test_declared_options",
    queue="database",
    schema=TestData,
    retry=RetryPolicy(attempts=2, backoff_seconds=5),
    timeout=1,
    delay=30,
)
def declared_options(data):
    """Options declared beside the handler: 1 s per attempt, its first run 30 s after enqueue."""
    time.sleep(data["seconds"])
    return {"slept": data["seconds"]}
