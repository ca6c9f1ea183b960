"""`manage.py qcluster`: django-q2's command and options, running our cluster
(`queues.django_q2.cluster`), which serves several queues at once, each with its own workers.

Which queues: `--queues database=4,emails=2` (a queue without `=N` gets its `QUEUES` workers),
`--name QUEUE` (django-q2's flag: that queue alone), `Q_CLUSTER_NAME` in the environment (the
same), or else every queue of the `QUEUES` setting.

Found before django-q2's own command because `queues` comes before `django_q` in INSTALLED_APPS.
It waits for its database before starting the cluster, so workers started before the database
(a host's boot, a service manager's restart of both) come up once it does instead of exiting.
It refuses a database connection a worker cannot work on (`pooled_connection_problem`), and
lowers its CPU priority first when asked (`--nice`, QUEUE_WORKER_NICE): every process of the
cluster inherits it.
"""

import os
import re
import sys
import time

from django.conf import settings
from django.core.management.base import CommandError
from django.db import OperationalError, connections
from django_q.conf import Conf, logger
from django_q.management.commands import qcluster

from queues.conf import conf
from queues.django_q2.cluster import Cluster
from queues.django_q2.reloading import ReloadingCluster

# Waits between tries while the database is unreachable at start: doubling up to the longest.
FIRST_WAIT = 0.5
LONGEST_WAIT = 4.0


class Command(qcluster.Command):
    help = "Run a worker cluster serving the queues of the QUEUES setting (or those named)."

    def add_arguments(self, parser):
        # django-q2's two flags, with what they do here.
        parser.add_argument(
            "--run-once",
            action="store_true",
            help="Start the cluster, then stop it at once (as SIGTERM does).",
        )
        parser.add_argument(
            "-n",
            "--name",
            dest="cluster_name",
            metavar="QUEUE",
            help="Serve this queue alone (same as --queues QUEUE, or Q_CLUSTER_NAME=QUEUE).",
        )
        parser.add_argument(
            "--queues",
            metavar="QUEUE[=N],...",
            help="The queues to serve, each with N worker processes (default: its QUEUES"
            ' "workers"), e.g. database=4,emails=2. Default: every queue of QUEUES.',
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            help="Restart the cluster when the project's Python code changes (development only;"
            " scripts/run uses it).",
        )
        parser.add_argument(
            "--nice",
            type=int,
            choices=range(20),
            metavar="0-19",
            help="Niceness added to the cluster's processes (default: QUEUE_WORKER_NICE).",
        )

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 (fails early without it: payloads are signed)
        problem = pooled_connection_problem(Conf.ORM)
        if problem:
            raise CommandError(problem)
        queues = served_queues(options["queues"], options["cluster_name"])
        if options["reload"]:
            argv = [arg for arg in sys.argv if arg != "--reload"]
            ReloadingCluster(argv).run()
            return
        # The reloader's child gets here with the same options: each cluster renices once.
        niceness = conf.QUEUE_WORKER_NICE if options["nice"] is None else options["nice"]
        if niceness:
            os.nice(niceness)
            logger.info("Cluster processes run at niceness %d", os.nice(0))
        wait_for_database(Conf.ORM)
        cluster = Cluster(queues)
        cluster.start()
        if options["run_once"]:
            cluster.stop()
        elif cluster.supervise():
            raise CommandError("A queue's sentinel died; the cluster stopped (see the log).")


QUEUE_SPEC = re.compile(r"(?P<name>[^=:\s]+)(?:[=:](?P<workers>.*))?")


def served_queues(spec: str | None, name: str | None = None) -> dict[str, int]:
    """{queue: worker processes} from `--queues` (`database=4,emails`), else `--name` or
    `Q_CLUSTER_NAME` (one queue), else every queue of QUEUES; CommandError for a bad value."""
    known = conf.QUEUES
    if spec is not None and name:
        raise CommandError("Give --queues or --name, not both.")
    if spec is None:
        name = name or os.environ.get("Q_CLUSTER_NAME")
        spec = name if name else ",".join(known)
    served: dict[str, int] = {}
    for item in spec.split(","):
        match = QUEUE_SPEC.fullmatch(item.strip())
        if not match:
            raise CommandError(
                f"--queues: {item.strip()!r} is not QUEUE or QUEUE=N (e.g. database=4,emails=2)."
            )
        queue, workers = match["name"], match["workers"]
        if queue not in known:
            raise CommandError(
                f"Unknown queue {queue!r}; the QUEUES setting has: {', '.join(known)}."
            )
        if queue in served:
            raise CommandError(f"--queues names queue {queue!r} twice.")
        if workers is None:
            served[queue] = known[queue]["workers"]
        elif workers.isdigit() and int(workers) > 0:
            served[queue] = int(workers)
        else:
            raise CommandError(
                f"--queues: workers of queue {queue!r} must be a number above 0, not {workers!r}."
            )
    return served


def wait_for_database(using):
    """Return once the database `using` accepts a connection, logging each failed try."""
    db = connections[using]
    started, wait = time.monotonic(), FIRST_WAIT
    while True:
        try:
            db.ensure_connection()
        except OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning("Database unreachable (%s); trying again in %.1f s", reason, wait)
            time.sleep(wait)
            wait = min(wait * 2, LONGEST_WAIT)
            continue
        db.close()  # the cluster's processes open their own
        if time.monotonic() - started > FIRST_WAIT:
            logger.info("Database reachable after %.1f s", time.monotonic() - started)
        return


def pooled_connection_problem(using: str) -> str | None:
    """Why workers cannot run on the database `using` as configured, or None.

    A worker proves an attempt alive with a session advisory lock held from the statement that
    begins it to the one that records its outcome, and its cluster's claims with another
    (`queues.engine.liveness`): both need one server session for the process's life. Through a
    transaction-mode pooler (which `QUEUE_PREPARED_STATEMENTS` off declares) each transaction may
    get another session, and a connection given back to Django's psycopg pool after a job keeps
    its locks for whoever checks it out next.
    """
    if connections[using].vendor != "postgresql":
        return None
    if not conf.QUEUE_PREPARED_STATEMENTS:
        return (
            "QUEUE_PREPARED_STATEMENTS is off, which declares the database connection pooled in"
            " transaction mode (PgBouncer): workers hold session advisory locks and need a"
            " direct or session-mode connection. Start qcluster with DATABASE_URL pointing at"
            " PostgreSQL itself (or a session-mode pool) and QUEUE_PREPARED_STATEMENTS unset."
            " See docs/deployment.md, 'PgBouncer and connection pools'."
        )
    if connections[using].settings_dict["OPTIONS"].get("pool"):
        return (
            f'DATABASES["{using}"]["OPTIONS"]["pool"] is set: workers hold session advisory locks'
            " on their connection for the process's life and cannot share a psycopg pool. Start"
            " qcluster without DATABASE_POOL (a persistent connection per worker process)."
            " See docs/deployment.md, 'PgBouncer and connection pools'."
        )
    return None
