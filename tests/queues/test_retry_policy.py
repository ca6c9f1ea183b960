"""Retry timing per job type: delay * 2**(n-1), optional jitter, overridable in settings."""

import pytest

from queues.core import registry
from queues.core.registry import RetryPolicy


def test_backoff_doubles_from_the_base_delay():
    policy = RetryPolicy(attempts=3, backoff_seconds=2.0)
    assert [policy.delay_after(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]


def test_jitter_spreads_delays_within_its_fraction():
    policy = RetryPolicy(backoff_seconds=2.0, jitter=0.25)
    delays = {policy.delay_after(2) for _ in range(200)}
    assert all(3.0 <= d <= 5.0 for d in delays)
    assert len(delays) > 100


def test_settings_override_a_job_types_registered_policy(settings):
    kind = registry.find("delete_conversation")
    assert kind.retry_policy == RetryPolicy(attempts=3, backoff_seconds=2.0, jitter=0.0)
    settings.JOB_RETRY_POLICIES = {"delete_conversation": {"attempts": 5, "jitter": 0.1}}
    assert kind.retry_policy == RetryPolicy(attempts=5, backoff_seconds=2.0, jitter=0.1)


@pytest.mark.django_db
def test_enqueue_takes_the_attempt_budget_from_the_policy(settings, user):
    from queues.api import enqueue

    settings.JOB_RETRY_POLICIES = {"test_sleep": {"attempts": 7}}
    assert enqueue("test_sleep", {"user_id": user.pk}).max_attempts == 7
