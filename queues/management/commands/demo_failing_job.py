from time import sleep

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from queues.api import enqueue
from queues.core import registry, selectors
from queues.extras.demo_job import DEMO_FAILING_JOB
from queues.models import Job

POLL_SECONDS = 0.5


def describe(job, now):
    """One line about where the job stands."""
    attempts = f"{job.attempts}/{job.max_attempts}"
    error = f"{job.last_error_class}: {job.last_error}"
    if job.status == Job.Status.QUEUED and job.retried_at:
        return (
            f"queued again by {job.retried_by or 'an operator'}: attempts {attempts}, "
            "the next one succeeds"
        )
    if job.status == Job.Status.QUEUED:
        return "queued, waiting for a worker"
    if job.status == Job.Status.RUNNING:
        return f"running attempt {attempts}"
    if job.status == Job.Status.RETRYING:
        wait = max((job.run_after - now).total_seconds(), 0)
        return (
            f"attempt {attempts} failed ({error}); retrying in {wait:.0f} s, "
            f"at {job.run_after:%H:%M:%S}"
        )
    if job.status == Job.Status.FAILED:
        return (
            f"failed for good after {attempts} attempts ({job.last_error_class}). Retry it as "
            "the operator: admin Jobs page, select it, action 'Retry selected jobs' (or the "
            f"dashboard's Retry button, or `manage.py retry_failed --type {DEMO_FAILING_JOB}`)"
        )
    if job.status == Job.Status.SUCCEEDED:
        return f"succeeded on attempt {job.attempts}: {job.result}"
    return job.status


class Command(BaseCommand):
    help = (
        f"Enqueue a {DEMO_FAILING_JOB!r} job: it fails every attempt with backoff, ends failed, "
        "and succeeds once an operator retries it. Shows the failure path; touches no data."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--username", default="demo", help="whose job it is (default: demo, from demo_user)"
        )
        parser.add_argument(
            "--follow",
            action="store_true",
            help="print each change of the job until it succeeds (Ctrl-C stops following)",
        )

    def handle(self, *args, username, follow, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}: run `manage.py demo_user` first")
        kind = registry.find(DEMO_FAILING_JOB)
        policy = kind.retry_policy
        delays = [f"{policy.delay_after(n):g} s" for n in range(1, policy.attempts)]
        job = enqueue(DEMO_FAILING_JOB, {"user_id": user.pk})
        self.stdout.write(
            f"Enqueued demo job {job.pk} ({kind.name}) for {username} on queue {kind.queue!r}.\n"
            f"It fails {policy.attempts} attempts (waiting {', then '.join(delays)} between "
            "them), ends failed, and succeeds once an operator retries it.\n"
            f"  job record: GET /api/queues/jobs/{job.pk} (as {username} or the operator)\n"
            f"  admin:      /admin/queues/job/{job.pk}/change/\n"
            "  dashboard:  /dashboard/queues"
        )
        if not selectors.live_cluster_counts().get(kind.queue):
            self.stderr.write(
                "No worker seen in the last 30 s: the job waits until one runs "
                "(`manage.py qcluster`; scripts/run starts one)."
            )
        if follow:
            self.follow(job)

    def follow(self, job):
        last = None
        try:
            while True:
                job.refresh_from_db()
                now = timezone.now()
                state = (job.status, job.attempts, job.max_attempts)
                if state != last:
                    self.stdout.write(f"{now:%H:%M:%S} {describe(job, now)}")
                    last = state
                if job.status in (Job.Status.SUCCEEDED, Job.Status.CANCELLED):
                    return
                sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self.stdout.write("stopped following; the job goes on")
