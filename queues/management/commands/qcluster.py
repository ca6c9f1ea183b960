"""`manage.py qcluster`: django-q2's command and options, running our cluster (`queues.cluster`).

Found before django-q2's own command because `queues` comes before `django_q` in INSTALLED_APPS.
"""

import os
import sys

from django.conf import settings
from django_q.management.commands import qcluster

from queues.cluster import Cluster
from queues.reloading import ReloadingCluster


class Command(qcluster.Command):
    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--reload",
            action="store_true",
            help="Restart the cluster when the project's Python code changes (development only;"
            " scripts/run uses it).",
        )

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 (fails early without it: payloads are signed)
        if options["reload"]:
            argv = [arg for arg in sys.argv if arg != "--reload"]
            ReloadingCluster(argv).run()
            return
        if options["cluster_name"]:
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        cluster = Cluster()
        cluster.start()
        if options["run_once"]:
            cluster.stop()
        # Otherwise the process waits for the sentinel at exit, as django-q2's command does.
