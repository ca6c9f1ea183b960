import getpass

from django.core.management.base import BaseCommand

from queues.core.services import retry_jobs
from queues.models import Job


class Command(BaseCommand):
    help = (
        "Send failed jobs back to their queue with a fresh attempt budget "
        "(`manage.py jobs retry` does the same with every filter of the job list)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--queue", help="only jobs of this queue")
        parser.add_argument("--type", dest="job_type", help="only jobs of this type")

    def handle(self, *args, queue=None, job_type=None, **options):
        jobs = Job.objects.filter(status=Job.Status.FAILED)
        if queue:
            jobs = jobs.filter(queue=queue)
        if job_type:
            jobs = jobs.filter(job_type=job_type)
        detail = f"manage.py retry_failed, OS user {getpass.getuser()}"
        self.stdout.write(f"retried {retry_jobs(jobs, detail=detail)} failed job(s)")
