"""Retry policy per job type: which failures retry (any, but the permanent ones and those a type
declares), and when: delay * 2**(n-1), capped, with jitter; overridable in settings. The runner
on a controlled clock; real clusters: tests/processes/test_async_and_retries.py."""

import pytest
from django.db import IntegrityError, OperationalError
from django.utils import timezone

from chat.services import ConversationGone
from queues.api import enqueue
from queues.core import registry
from queues.core.registry import RetryPolicy
from queues.errors import (
    JobTimeout,
    JobValidationError,
    PermanentJobError,
    TransientJobError,
    WorkerLost,
)
from queues.execution.runner import run_job


class Unreachable(OSError):
    """What an HTTP client raises for a host it cannot reach (requests' `ConnectionError`)."""


def test_backoff_doubles_from_the_base_delay():
    policy = RetryPolicy(attempts=3, backoff_seconds=2.0, jitter=0)
    assert [policy.delay_after(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]


def test_backoff_stops_growing_at_its_cap():
    policy = RetryPolicy(backoff_seconds=2.0, jitter=0, max_backoff_seconds=10)
    assert [policy.delay_after(n) for n in (1, 2, 3, 4, 500)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_spreads_delays_within_its_fraction():
    policy = RetryPolicy(backoff_seconds=2.0, jitter=0.25)
    delays = {policy.delay_after(2) for _ in range(200)}
    assert all(3.0 <= d <= 5.0 for d in delays)
    assert len(delays) > 100


def test_the_default_is_three_attempts_doubling_from_two_seconds_with_ten_percent_jitter():
    policy = RetryPolicy()
    assert (policy.attempts, policy.backoff_seconds, policy.jitter) == (3, 2.0, 0.1)
    assert policy.max_backoff_seconds == 600
    assert all(1.8 <= policy.delay_after(1) <= 2.2 for _ in range(50))
    assert len({policy.delay_after(1) for _ in range(50)}) > 1


@pytest.mark.parametrize(
    "error",
    [
        Unreachable("host unreachable"),
        ConnectionError("reset"),
        TimeoutError("read timed out"),
        KeyError("a bug"),
        IntegrityError("a race"),
        OperationalError("the database went away"),
        TransientJobError("down"),
        JobTimeout("too long"),
        WorkerLost("killed"),
    ],
)
def test_by_default_any_error_is_retried(error):
    assert RetryPolicy().retries(error)


@pytest.mark.parametrize(
    "error",
    [
        PermanentJobError("bad data"),
        ConversationGone("gone"),  # a SubjectGone
        JobValidationError("invalid"),
    ],
)
def test_permanent_errors_are_never_retried_whatever_the_policy(error):
    assert not RetryPolicy().retries(error)
    assert not RetryPolicy(autoretry_for=(Exception, PermanentJobError)).retries(error)


def test_a_type_declares_errors_never_worth_a_retry():
    policy = RetryPolicy(dont_autoretry_for=(ValueError,))
    assert not policy.retries(ValueError("bad input"))
    assert not policy.retries(JobValidationError("a ValueError too"))
    assert policy.retries(KeyError("anything else"))


def test_a_type_may_retry_only_some_errors_of_its_own_but_the_queues_troubles_still_retry():
    policy = RetryPolicy(autoretry_for=(ConnectionError,))
    assert policy.retries(Unreachable()) is False  # an OSError, not a ConnectionError
    assert policy.retries(ConnectionRefusedError())
    assert not policy.retries(KeyError("a bug"))
    assert policy.retries(OperationalError("the database went away"))
    assert policy.retries(JobTimeout("too long"))
    assert not RetryPolicy(dont_autoretry_for=(JobTimeout,)).retries(JobTimeout("too long"))
    # A lost worker is always counted and retried, as when its next delivery finds it.
    assert RetryPolicy(dont_autoretry_for=(Exception,)).retries(WorkerLost("killed"))


def test_error_classes_may_be_dotted_paths_and_anything_else_is_refused():
    policy = RetryPolicy(
        dont_autoretry_for="builtins.ValueError", autoretry_for=["builtins.OSError"]
    )
    assert (policy.dont_autoretry_for, policy.autoretry_for) == ((ValueError,), (OSError,))
    with pytest.raises(ValueError, match=r"'no\.such\.Error' cannot be imported"):
        RetryPolicy(dont_autoretry_for=["no.such.Error"])
    with pytest.raises(ValueError, match="is not an exception class"):
        RetryPolicy(autoretry_for=["queues.core.registry.RetryPolicy"])


@pytest.mark.parametrize(
    "bad",
    [{"attempts": 0}, {"attempts": 2.5}, {"backoff_seconds": -1}, {"jitter": 1.5}],
)
def test_a_policy_that_cannot_work_is_refused_when_declared(bad):
    with pytest.raises((TypeError, ValueError)):
        RetryPolicy(**bad)


def test_settings_override_a_job_types_registered_policy(settings):
    kind = registry.find("delete_conversation")
    assert kind.retry_policy == RetryPolicy()
    settings.JOB_RETRY_POLICIES = {
        "delete_conversation": {
            "attempts": 5,
            "jitter": 0,
            "dont_autoretry_for": ["builtins.KeyError"],
        }
    }
    assert kind.retry_policy == RetryPolicy(attempts=5, jitter=0, dont_autoretry_for=(KeyError,))


@pytest.mark.django_db
def test_enqueue_takes_the_attempt_budget_from_the_policy(settings, user):
    settings.JOB_RETRY_POLICIES = {"test_sleep": {"attempts": 7}}
    assert enqueue("test_sleep", {"user_id": user.pk}).max_attempts == 7


# Through the runner, on a controlled clock.


@pytest.fixture
def clock(monkeypatch):
    """A stopped `timezone.now`, moved by the test to each retry's due time."""
    now = [timezone.now()]
    monkeypatch.setattr(timezone, "now", lambda: now[0])
    return now


def run_attempts(job, clock, times):
    """Run `times` attempts of `job`, each when due; (status, seconds until the next) of each."""
    seen = []
    for _ in range(times):
        run_job(job.pk)
        job.refresh_from_db()
        seen.append((job.status, (job.run_after - clock[0]).total_seconds()))
        clock[0] = max(clock[0], job.run_after)
    return seen


@pytest.mark.django_db
def test_a_connection_error_is_retried_with_backoff_until_the_host_answers(user, clock):
    job = enqueue("test_unreachable", {"user_id": user.pk, "fail_times": 2})
    assert run_attempts(job, clock, 3) == [("retrying", 0.2), ("retrying", 0.4), ("succeeded", 0)]
    assert (job.attempts, job.result, job.last_error_class) == (
        3,
        {"attempt": 3},
        "ConnectionError",
    )


@pytest.mark.django_db
def test_a_connection_error_fails_the_job_once_its_attempts_are_spent(user, clock):
    job = enqueue("test_unreachable", {"user_id": user.pk, "fail_times": 9})
    statuses = [status for status, _ in run_attempts(job, clock, 3)]
    assert statuses == ["retrying", "retrying", "failed"] and job.attempts == 3


@pytest.mark.django_db
def test_an_error_its_type_declares_permanent_fails_the_job_at_once(user, clock):
    job = enqueue("test_gives_up", {"user_id": user.pk, "fail_times": 1})
    run_attempts(job, clock, 1)
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 1, "ValueError")
    assert job.finished_at == clock[0]


@pytest.mark.django_db
def test_settings_declare_an_error_permanent_by_its_dotted_path(user, clock, settings):
    settings.JOB_RETRY_POLICIES = {
        "test_unreachable": {"dont_autoretry_for": ["builtins.ConnectionError"]}
    }
    job = enqueue("test_unreachable", {"user_id": user.pk, "fail_times": 1})
    run_attempts(job, clock, 1)
    assert (job.status, job.attempts, job.last_error_class) == ("failed", 1, "ConnectionError")
