from django.core.management.base import BaseCommand
from django.db.models import Count

from queues.models import Job


class Command(BaseCommand):
    help = "Count job records per queue and status."

    def handle(self, *args, **options):
        counts = {}
        for row in Job.objects.values("queue", "status").annotate(n=Count("id")):
            counts.setdefault(row["queue"], {})[row["status"]] = row["n"]
        statuses = list(Job.Status.values)
        self.stdout.write(f"{'queue':<16}" + "".join(f"{s:>11}" for s in statuses))
        for queue in sorted(counts):
            self.stdout.write(
                f"{queue:<16}" + "".join(f"{counts[queue].get(s, 0):>11}" for s in statuses)
            )
