"""Chaos: each fault of docs/reliability.md on real clusters, counted against a ledger.

    scripts/chaos                      # every scenario, ~10 minutes on 2 cores
    scripts/chaos --only redis-restart --jobs 200

Everything runs on servers this command starts and removes: a throwaway PostgreSQL
(tests/support/pg_server.py) and, for the Redis scenario, a redis-server on a free port. Never the
machine's own.

Each scenario enqueues `--jobs` jobs of the `chaos_work` type (bench/chaos_jobs.py), starts two
clusters of `--workers` workers, injects its fault once a third of the jobs have completed, and
waits up to `--deadline` seconds for the rest. An idle scenario lets the clusters finish every job
and wait idle first, injects its fault, then enqueues a quarter as many new jobs. Per scenario it
counts, from the ledger the handler writes in the job's own transaction:
- lost: jobs whose handler never completed within the deadline;
- twice: jobs whose handler completed (committed) more than once;
- false failures: jobs recorded `failed` (the handler never fails by itself);
- extra attempts: attempts recorded beyond one per job (a killed worker's attempt is a real one);
- recovery: seconds from the fault until every job had completed (an idle scenario also notes
  when the first new job completed).
Clusters run with QUEUE_TIMEOUT=20 and QUEUE_REDELIVERY_GRACE=10 (`--timeout`, `--grace`), so a
redelivery that waits for the visibility timeout shows as ~30 s.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.pg_server import PostgresServer, free_port  # noqa: E402

JOB_TYPES = "bench.chaos_jobs"
# Seconds the clusters of an idle scenario wait with nothing to do before its fault.
IDLE_BEFORE_FAULT = 3


class RedisServer:
    """A redis-server without persistence on a free port: a restart loses what it held."""

    def __init__(self, directory):
        self.port = free_port()
        self.directory = directory
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.from_url(self.url).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def restart(self):
        self.stop()
        self.start()


def setup_django(database_url, options):
    os.environ.update(
        DJANGO_SETTINGS_MODULE="slimy.settings",
        DATABASE_URL=database_url,
        SECRET_KEY=os.environ.get("SECRET_KEY") or "slimy-chaos-secret-key-" + "0123456789" * 4,
        JOB_TYPE_MODULES=JOB_TYPES,
        QUEUE_TIMEOUT=str(options.timeout),
        QUEUE_REDELIVERY_GRACE=str(options.grace),
        JOB_KEEP_SUCCEEDED="100000",
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


class Run:
    """One scenario's jobs, clusters and counts."""

    def __init__(self, options, workdir, pg, redis_server=None):
        from django.contrib.auth import get_user_model

        from tests.support.cluster import ClusterFactory

        self.options = options
        self.pg = pg
        self.redis = redis_server
        self.factory = ClusterFactory(workdir)
        self.user = get_user_model().objects.get_or_create(username="chaos")[0]
        self.clusters = []
        self.job_ids = []
        self.fault_at = None

    # --- setup -----------------------------------------------------------------------------
    def enqueue(self, count):
        """Enqueue `count` more jobs; their ids."""
        from queues.api import enqueue

        data = {"user_id": self.user.pk, "seconds": self.options.seconds}
        new = [enqueue("chaos_work", data).pk for _ in range(count)]
        self.job_ids += new
        return new

    def start_clusters(self):
        env = {
            "JOB_TYPE_MODULES": JOB_TYPES,
            "QUEUE_REDELIVERY_GRACE": str(self.options.grace),
            "JOB_KEEP_SUCCEEDED": "100000",
            # The harness itself logs warnings only; a cluster's start is its INFO "ready" line.
            "LOG_LEVEL": "INFO",
        }
        if self.redis:
            env.update(QUEUE_BROKER="redis", REDIS_URL=self.redis.url)
        for _ in range(2):
            self.clusters.append(
                self.factory.start(
                    workers=self.options.workers, timeout=self.options.timeout, extra_env=env
                )
            )

    # --- counts --------------------------------------------------------------------------
    def sql(self, query, params=()):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def completed(self):
        return self.sql("SELECT count(DISTINCT job_id) FROM chaos_ledger")[0][0]

    def broker_backlog(self):
        if self.redis:
            from django_q.brokers import get_broker

            return get_broker("database").queue_size()
        return self.sql("SELECT count(*) FROM django_q_ormq")[0][0]

    def wait_completed(self, target, deadline, label):
        last_report = 0
        while (done := self.completed()) < target and time.monotonic() < deadline:
            if time.monotonic() - last_report >= 5:
                since = (
                    f", {time.monotonic() - self.fault_at:.0f}s after the fault"
                    if (self.fault_at)
                    else ""
                )
                print(f"    {label}: {done}/{len(self.job_ids)} completed{since}", flush=True)
                last_report = time.monotonic()
            time.sleep(0.2)
        return self.completed()

    def settle(self, seconds=15):
        """Let duplicate deliveries still in the broker run, so a second completion is counted."""
        deadline = time.monotonic() + seconds
        while self.broker_backlog() and time.monotonic() < deadline:
            time.sleep(0.5)

    def result(self):
        from django.db.models import F, Sum

        from queues.models import Job

        jobs = Job.objects.filter(pk__in=self.job_ids)
        per_job = dict(self.sql("SELECT job_id, count(*) FROM chaos_ledger GROUP BY job_id"))
        last = self.sql("SELECT extract(epoch FROM max(at)) FROM chaos_ledger")[0][0]
        lost = len(self.job_ids) - len(per_job)
        recovery = None
        if not lost and self.fault_at is not None:
            # The ledger's clock is the database's; the fault's is ours, on the same machine.
            recovery = max(0.0, float(last) - self.fault_wall)
        return {
            "lost": lost,
            "twice": sum(1 for count in per_job.values() if count > 1),
            "false_failures": jobs.filter(status="failed").count(),
            "extra_attempts": jobs.filter(attempts__gt=1).aggregate(n=Sum(F("attempts") - 1))["n"]
            or 0,
            "recovery": recovery,
        }

    def first_completed_after_fault(self, job_ids):
        """Seconds from the fault until the first of `job_ids` completed."""
        first = self.sql(
            "SELECT extract(epoch FROM min(at)) FROM chaos_ledger WHERE job_id = ANY(%s)",
            [[str(pk) for pk in job_ids]],
        )[0][0]
        return None if first is None else float(first) - self.fault_wall

    def mark_fault(self):
        self.fault_at = time.monotonic()
        self.fault_wall = time.time()

    def stop(self):
        # Every cluster the factory started, also one whose start timed out before it was listed.
        for cluster in self.factory.clusters:
            cluster.stop(timeout=self.options.timeout + 15)

    def reset(self):
        from django.db import connection

        connection.close()
        self.sql(
            "TRUNCATE chaos_ledger, queues_job, django_q_ormq, queues_clusterheartbeat, "
            "queues_jobcounter, queues_jobminute"
        )
        if self.redis:
            from django_q.brokers import get_broker

            get_broker("database").delete_queue()


# --- the faults: each gets the run and returns a note for the table -----------------------------
def no_fault(run):
    return "reference: no fault"


def sigkill_one_worker(run):
    from queues.models import Job

    busy = Job.objects.filter(status="running").exclude(worker="").values_list("worker", flat=True)
    pid = int(busy.first().rsplit(":", 1)[1]) if busy.exists() else run.clusters[0].worker_pids()[0]
    os.kill(pid, signal.SIGKILL)
    return f"worker {pid} killed mid-job"


def sigkill_a_cluster(run):
    run.clusters[0].kill()
    return "one of two clusters killed (group SIGKILL); the other carries on"


def group_sigterm(run):
    started = time.monotonic()
    run.clusters[0].signal_group(signal.SIGTERM)
    run.clusters[0].process.wait(run.options.timeout + 15)
    return f"one of two clusters stopped by group SIGTERM in {time.monotonic() - started:.1f}s"


def postgres_restart(run):
    from django.db import connection

    started = time.monotonic()
    run.pg.restart()
    connection.close()
    return f"fast restart of the throwaway server ({time.monotonic() - started:.1f}s)"


def terminate_worker_connections(run):
    rows = run.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return f"{rows[0][0]} sessions terminated"


def broker_rows_tripled(run):
    rows = run.sql(
        # Each copy falls due with its original (a claimed row's copies at once), so copies of a
        # job are claimed together and run side by side, as a duplicate delivery does.
        "INSERT INTO django_q_ormq (key, payload, lock) "
        "SELECT key, payload, least(lock, now()) FROM django_q_ormq, generate_series(1, 2) "
        "RETURNING id"
    )
    return f"{len(rows)} copies added, each due with its original"


def broker_rows_deleted(run):
    rows = run.sql("DELETE FROM django_q_ormq RETURNING id")
    return f"{len(rows)} rows deleted, claimed ones included"


def redis_restart(run):
    run.redis.restart()
    return "redis-server restarted without persistence: its lists are gone"


# Scenarios whose fault strikes clusters that have finished their work and wait for more.
IDLE = {"terminate-idle", "restart-idle"}
SCENARIOS = {
    "no-fault": ("No fault (reference)", no_fault),
    "sigkill-worker": ("SIGKILL one worker", sigkill_one_worker),
    "sigkill-cluster": ("SIGKILL a whole cluster", sigkill_a_cluster),
    "group-sigterm": ("Group SIGTERM mid-run", group_sigterm),
    "postgres-restart": ("PostgreSQL restart", postgres_restart),
    "terminate-backends": (
        "pg_terminate_backend of every worker connection",
        terminate_worker_connections,
    ),
    "terminate-idle": (
        "Connections cut while idle, then new work",
        terminate_worker_connections,
    ),
    "restart-idle": ("PostgreSQL restart while idle, then new work", postgres_restart),
    "rows-tripled": ("Each broker row tripled", broker_rows_tripled),
    "rows-deleted": ("Broker rows deleted", broker_rows_deleted),
    "redis-restart": ("Redis restart (QUEUE_BROKER=redis)", redis_restart),
}


def run_scenario(key, options, workdir, pg):
    title, fault = SCENARIOS[key]
    redis_server = None
    conf_saved = None
    if key == "redis-restart":
        from django_q.conf import Conf

        redis_server = RedisServer(workdir).start()
        conf_saved = (Conf.BROKER_CLASS, Conf.REDIS)
        Conf.BROKER_CLASS, Conf.REDIS = (
            "queues.django_q2.redis_broker.RedisJobBroker",
            redis_server.url,
        )
    run = Run(options, workdir / key, pg, redis_server)
    (workdir / key).mkdir()
    try:
        run.reset()
        run.enqueue(options.jobs)
        run.start_clusters()
        started = time.monotonic()
        idle = key in IDLE
        run.wait_completed(options.jobs if idle else options.jobs // 3, started + 120, "before")
        if idle:
            time.sleep(IDLE_BEFORE_FAULT)
        run.mark_fault()
        at = run.completed()
        note = fault(run)
        print(f"    fault at {at}/{len(run.job_ids)} completed: {note}", flush=True)
        if idle:
            new = run.enqueue(options.jobs // 4)
            note += f"; then {len(new)} new jobs"
        run.wait_completed(len(run.job_ids), run.fault_at + options.deadline, "recovering")
        run.settle()
        result = run.result()
        if idle:
            first = run.first_completed_after_fault(new)
            note += "" if first is None else f", the first done {first:.1f} s after the fault"
        result["note"] = note
        return title, result
    finally:
        run.stop()
        if redis_server:
            from django_q.conf import Conf

            Conf.BROKER_CLASS, Conf.REDIS = conf_saved
            redis_server.stop()


def table(results, options):
    lines = [
        f"| Scenario ({options.jobs} jobs, 2 clusters x {options.workers} workers) | jobs lost "
        "| handlers run twice to completion | false failures | extra attempts | recovery time "
        "| what happened |",
        "|---|---|---|---|---|---|---|",
    ]
    for title, r in results:
        recovery = (
            f"{r['recovery']:.1f} s"
            if r["recovery"] is not None
            else f"> {options.deadline} s (not all done)"
        )
        lines.append(
            f"| {title} | {r['lost']} | {r['twice']} | {r['false_failures']} "
            f"| {r['extra_attempts']} | {recovery} | {r['note']} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--workers", type=int, default=3, help="per cluster (two clusters)")
    parser.add_argument("--seconds", type=float, default=0.1, help="each handler's run time")
    parser.add_argument("--timeout", type=int, default=20, help="QUEUE_TIMEOUT")
    parser.add_argument("--grace", type=int, default=10, help="QUEUE_REDELIVERY_GRACE")
    parser.add_argument("--deadline", type=int, default=100, help="seconds to wait after a fault")
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="slimy-chaos-"))
    with PostgresServer() as pg:
        setup_django(pg.create_database("slimy_chaos"), options)
        from django.db import connection

        from bench.chaos_jobs import CREATE_LEDGER

        with connection.cursor() as cursor:
            cursor.execute(CREATE_LEDGER)
        results = []
        began = time.monotonic()
        for n, key in enumerate(options.only, 1):
            print(f"[{n}/{len(options.only)}] {SCENARIOS[key][0]}", flush=True)
            title, result = run_scenario(key, options, workdir, pg)
            results.append((title, result))
            recovery = "-" if result["recovery"] is None else f"{result['recovery']:.1f}s"
            print(
                f"    lost {result['lost']}, twice {result['twice']}, false failures "
                f"{result['false_failures']}, extra attempts {result['extra_attempts']}, "
                f"recovery {recovery} ({time.monotonic() - began:.0f}s so far)",
                flush=True,
            )
    print()
    print(table(results, options))
    print(f"\nCluster logs: {workdir}")


if __name__ == "__main__":
    main()
