"""Real `manage.py qcluster` processes for tests, pointed at the test database."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]

# Settings for `ClusterFactory.start(extra_env=...)`, named for why a test wants them.
# A lost worker's job is delivered again 2 s after its timeout rather than 30 s: recovery is quick.
FAST_RECOVERY = {"QUEUE_REDELIVERY_GRACE": "2"}
# Retention keeps 50 succeeded records by default; a test checking every job of a batch keeps all.
KEEP_ALL_JOBS = {"JOB_KEEP_SUCCEEDED": "1000", "JOB_KEEP_CANCELLED": "1000"}


def wait_for(predicate, timeout=30.0, interval=0.05, message="condition"):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`.

    `message` says what was awaited; a callable is asked at the timeout, so it can tell how far
    things got."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            awaited = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {awaited}")
        time.sleep(interval)


def test_database_url():
    db = settings.DATABASES["default"]
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def database_session(**options):
    """A psycopg connection of its own to the test database (PostgreSQL), e.g. to hold a lock."""
    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        dbname=db["NAME"],
        **options,
    )


def _children():
    """{pid: its child processes' pids}, of every process."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=", "-e"], capture_output=True, text=True).stdout
    children = {}
    for line in out.splitlines():
        pid, ppid = line.split()
        children.setdefault(int(ppid), []).append(int(pid))
    return children


class Cluster:
    def __init__(self, process, log_path):
        self.process = process
        self.log_path = log_path

    @property
    def log(self):
        return self.log_path.read_text(errors="replace")

    def worker_pids(self):
        """Pids of the cluster's worker processes (children of its sentinels)."""
        children = _children()
        return [pid for s in children.get(self.process.pid, []) for pid in children.get(s, [])]

    def sentinel_pids(self):
        """Pids of the cluster's sentinels, one per queue (children of its main process)."""
        return _children().get(self.process.pid, [])

    def signal_group(self, sig):
        """Signal every process of the cluster, as systemd's default KillMode does on stop."""
        os.killpg(self.process.pid, sig)

    def group_alive(self):
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout=30):
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self):
        """SIGKILL the whole cluster: the qcluster process and all its children."""
        if self.group_alive():
            self.signal_group(signal.SIGKILL)
        self.process.wait(10)


class ClusterFactory:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.clusters = []

    def start(self, *, workers=4, timeout=10, extra_env=None, wait=True, args=()):
        """A `manage.py qcluster` (with `args`) whose queues' workers default to `workers`;
        with `wait`, returned once every queue's sentinel runs."""
        env = {
            **os.environ,
            "DATABASE_URL": test_database_url(),
            "QUEUE_WORKERS": str(workers),
            "QUEUE_TIMEOUT": str(timeout),
            "JOB_TYPE_MODULES": "tests.support.job_types",
            "DJANGO_Q_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        log_path = self.tmp_path / f"qcluster-{len(self.clusters)}.log"
        with log_path.open("w") as log:  # the process keeps its own copy open
            process = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        cluster = Cluster(process, log_path)
        self.clusters.append(cluster)
        if wait:
            wait_for(
                lambda: " ready: " in cluster.log or process.poll() is not None,
                60,
                message="qcluster start",
            )
            assert process.poll() is None, cluster.log
        return cluster

    def stop_all(self):
        for cluster in self.clusters:
            cluster.stop()


def manage(*args, timeout=60, extra_env=None):
    """`manage.py ARGS` in a process of its own, on the test database, as an operator types it
    (with the test job types loaded); the `CompletedProcess`, output as text."""
    env = {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "JOB_TYPE_MODULES": "tests.support.job_types",
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
