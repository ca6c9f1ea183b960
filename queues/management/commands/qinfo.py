"""`manage.py qinfo`: the live clusters and the queues, once (replaces django-q2's)."""

import json
from typing import Any

from django.core.management.base import CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django_q.management.commands.qinfo import Command as DjangoQInfo

from queues.management import inspection


class Command(DjangoQInfo):
    help = (
        "The clusters seen in the last 30 s (queue, host, pid, workers, uptime) and each queue's "
        "clusters, backlog and throughput, from the database: every cluster on any host."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)  # --config (django-q2's settings), --ids
        parser.add_argument("--json", action="store_true", help="the same as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["config"]:
            super().handle(*args, **options)
        elif options["ids"]:
            for cluster in inspection.clusters():
                workers = " ".join(map(str, cluster["workers"]))
                self.stdout.write(
                    f"{cluster['queue']} {cluster['host']} {cluster['pid']} {workers}"
                )
        elif options["json"]:
            snapshot = {"clusters": inspection.clusters(), "queues": inspection.queues()}
            self.stdout.write(json.dumps(snapshot, cls=DjangoJSONEncoder, indent=2))
        else:
            self.stdout.write("\n".join(inspection.overview()), ending="")
