"""`manage.py qcluster`: django-q2's command and options, running our cluster (`queues.cluster`).

Found before django-q2's own command because `queues` comes before `django_q` in INSTALLED_APPS.
"""

import os

from django.conf import settings
from django_q.management.commands import qcluster

from queues.cluster import Cluster


class Command(qcluster.Command):
    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 (fails early without it: payloads are signed)
        if options["cluster_name"]:
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        cluster = Cluster()
        cluster.start()
        if options["run_once"]:
            cluster.stop()
        # Otherwise the process waits for the sentinel at exit, as django-q2's command does.
