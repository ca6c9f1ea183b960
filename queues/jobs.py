"""The queues app's own job type: a demo of the failure path (`manage.py demo_failing_job`).

It shows what an outage looks like without breaking anything: every attempt of its first run
fails as a transient error, so it is retried with backoff (10 s, then 20 s) and ends failed after
three attempts; an operator's retry gives it a fresh budget, and its next attempt succeeds. It
touches no data.
"""

from queues import registry
from queues.errors import TransientJobError
from queues.registry import RetryPolicy, register
from queues.schemas import JobData
from slimy import log_context

DEMO_FAILING_JOB = "demo_fails_until_retried"


class DemoOutage(TransientJobError):
    """The simulated outage of the demo job: transient, so it is retried with backoff."""


@register(
    DEMO_FAILING_JOB,
    queue="database",
    schema=JobData,
    retry=RetryPolicy(attempts=3, backoff_seconds=10.0),
    subject=lambda data, result=None: "demo:failing-job",
)
def demo_fails_until_retried(data):
    # The runner binds the attempt number to the log context of the job it runs.
    attempt = log_context.current()["attempt"]
    budget = registry.find(DEMO_FAILING_JOB).retry_policy.attempts
    if attempt <= budget:
        raise DemoOutage(
            f"simulated outage (demo) on attempt {attempt} of {budget}: "
            "an operator's retry makes it succeed"
        )
    return {"attempt": attempt, "demo": "succeeded after an operator's retry"}
