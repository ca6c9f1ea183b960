"""The queues app's own job type: a demo of the failure path (`manage.py demo_failing_job`).

It shows what an outage looks like without breaking anything: every attempt of its first run
fails (a `TransientJobError`, as an outage would), so it is retried with backoff (10 s, then
20 s) and ends failed after three attempts; an operator's retry gives it a fresh budget, and its
next attempt succeeds. It touches no data.
"""

from queues.api import JobData, RetryPolicy, TransientJobError, job_type
from queues.conf import conf

DEMO_FAILING_JOB = "demo_fails_until_retried"


class DemoOutage(TransientJobError):
    """The simulated outage of the demo job: transient, so it is retried with backoff."""


@job_type(
    DEMO_FAILING_JOB,
    queue=conf.DEFAULT_QUEUE,
    schema=JobData,
    retry=RetryPolicy(attempts=3, backoff_seconds=10.0, jitter=0),  # the delays it announces
    subject=lambda data, result=None: "demo:failing-job",
)
def demo_fails_until_retried(job):
    attempt, budget = job.attempt, job.max_attempts
    if job.retried_at is None:  # the first run, whose budget is `max_attempts`
        raise DemoOutage(
            f"simulated outage (demo) on attempt {attempt} of {budget}: "
            "an operator's retry makes it succeed"
        )
    return {"attempt": attempt, "demo": "succeeded after an operator's retry"}
