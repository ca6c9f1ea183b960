"""Cost as the backlog grows: the same measurements at each backlog of waiting jobs.

    .venv/bin/python bench/run.py --only scaling --backlogs 1000,100000,1000000

At each backlog (built here, topped up between points), in this order:
- enqueue: 2,000 deletion requests the way the API makes them (`request_conversation_deletion`),
  milliseconds per job;
- drain: a qcluster deletes those 2,000 conversations (20 messages each) while the backlog waits
  behind them (the backlog's client jobs rank after the app's deletions; one claimed row in
  OLDEST_EVERY is the backlog's oldest, as in production): jobs/s and CPU ms per job, workers and
  server, read as in the drain scenario;
- HTTP, through gunicorn: `DELETE /api/chat/conversations/{id}` p50 / p99, and `/metrics` and
  the dashboard page p50, one client;
- idle: a qcluster with the backlog's queue paused (an idle cluster beside a waiting backlog):
  statements per minute it sends and server CPU per minute, from the server's log and /proc;
- the rescue's check (`RESCUE_NEEDED`, which every pusher also runs inside its claim every
  QUEUE_RESCUE_INTERVAL seconds) timed with EXPLAIN ANALYZE.

The backlog is real jobs: templates enqueued through `enqueue_many` (save_message and
create_conversation jobs of 100 users' 1,000 conversations), copied by one bench-only statement
per type (BACKLOG_JOBS), each copy with its own id, signed broker row (`payloads.payload`) and due
time spread over the last 10 minutes, and the counters `enqueue_many` keeps (`jobs_enqueued_sql`).
"""

import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from bench.pg_server import free_port
from bench.run import (
    ENV,
    ROOT,
    WORKER_APP,
    make_conversations,
    percentile,
    progress,
    qcluster,
    request_deletions,
    with_retries,
)

BATCH = 2000  # the fixed batch each point drains
HTTP_DELETES = 200
PAGE_READS = 20
USERS = 100
POOL = 1000  # conversations the backlog's jobs are about
DUE_SPREAD = 600  # seconds: the backlog's due times spread over the last 10 minutes
CHUNK = 50_000  # backlog jobs per copying statement

# The bench's own staging table: one row per backlog job to make (its id, its template, its
# broker row's id, signed payload and due time), COPYed in, then turned into job records and
# broker rows by BACKLOG_ROWS and BACKLOG_JOBS.
STAGING = """
CREATE UNLOGGED TABLE IF NOT EXISTS bench_backlog (
    id uuid, template uuid, broker_row bigint, payload text, due timestamptz
)"""
# Broker rows of the staged jobs: their template's queue and claim rank.
BACKLOG_ROWS = """
INSERT INTO django_q_ormq (id, key, payload, lock, priority)
SELECT n.broker_row, t.queue, n.payload, n.due, t.rank
FROM bench_backlog n JOIN bench_template t ON t.id = n.template
"""
# Job records of the staged jobs of one type, each a copy of its template but for id, broker
# row, due and creation times; the counters `enqueue_many` keeps, in the same statement.
BACKLOG_JOBS = """
WITH stored AS (
    INSERT INTO queues_job ({columns})
    SELECT n.id, n.broker_row, n.due, n.due, {copied}
    FROM bench_backlog n JOIN bench_template j ON j.id = n.template
    WHERE j.job_type = %s
    RETURNING id
) {counters}
"""


class Backlog:
    """The backlog's templates and its size; `fill(size)` tops it up to `size` waiting jobs."""

    def __init__(self, db):
        from django.contrib.auth import get_user_model

        from queues.api import enqueue_many

        self.db = db
        users = get_user_model().objects.bulk_create(
            get_user_model()(username=f"backlog-{n}", password="!") for n in range(USERS)
        )
        conversations = []
        for user in users:
            conversations += [(user.pk, c) for c in make_conversations(db, user.pk, 10, 2)]
        self.pool_ids = [c for _, c in conversations]
        messages = [
            {"conversation_id": c, "user_id": u, "role": "user", "content": f"hello {c}"}
            for u, c in conversations
        ]
        # 900 templates, two save_message jobs to one create_conversation, under the smallest
        # backlog measured (1,000), which they are the start of.
        created = [{"user_id": u, "title": f"backlog {c}"} for u, c in conversations[600:900]]
        templates = enqueue_many("save_message", messages[:600]) + enqueue_many(
            "create_conversation", created
        )
        # A snapshot of the templates as enqueued (the drains run them), with their claim rank.
        db.execute(
            "CREATE UNLOGGED TABLE bench_template AS SELECT j.*, r.priority AS rank"
            " FROM queues_job j JOIN django_q_ormq r ON r.id = j.broker_row"
            " WHERE j.id = ANY(%s)",
            [[t.pk for t in templates]],
        )
        self.templates = db.execute(
            "SELECT id, queue, job_type FROM bench_template ORDER BY id"
        ).fetchall()
        db.execute(STAGING)

    def waiting(self):
        return self.db.execute(
            "SELECT count(*) FROM queues_job WHERE status IN ('queued', 'retrying')"
        ).fetchone()[0]

    def fill(self, size):
        """Top the backlog up to `size` waiting jobs; returns (jobs added, seconds)."""
        start, added = time.perf_counter(), 0
        missing = size - self.waiting()
        while missing > 0:
            count = min(missing, CHUNK)
            self._copy(count)
            added += count
            missing -= count
            progress(f"  backlog: {added:,} jobs added")
        self.db.execute("VACUUM ANALYZE queues_job")
        self.db.execute("VACUUM ANALYZE django_q_ormq")
        return added, time.perf_counter() - start

    def _copy(self, count):
        from types import SimpleNamespace

        from django.utils import timezone

        from queues.django_q2 import payload as payloads

        now = timezone.now()
        first = self.db.execute(
            "SELECT nextval(pg_get_serial_sequence('django_q_ormq', 'id'))"
        ).fetchone()[0]
        self.db.execute(
            "SELECT setval(pg_get_serial_sequence('django_q_ormq', 'id'), %s)", [first + count]
        )
        self.db.execute("TRUNCATE bench_backlog")
        with self.db.cursor().copy(
            "COPY bench_backlog (id, template, broker_row, payload, due) FROM STDIN"
        ) as copy:
            for n in range(count):
                template_id, queue, job_type = self.templates[n % len(self.templates)]
                job = SimpleNamespace(id=uuid.uuid4(), queue=queue, job_type=job_type)
                due = now - timedelta(seconds=random.random() * DUE_SPREAD)
                copy.write_row((job.id, template_id, first + 1 + n, payloads.payload(job), due))
        with self.db.transaction():
            self.db.execute(BACKLOG_ROWS)
            for job_type in sorted({t[2] for t in self.templates}):
                sql, params = backlog_jobs_sql(self.templates[0][1], job_type)
                self.db.execute(sql, params)


def backlog_jobs_sql(queue, job_type):
    from queues.engine.counters import jobs_enqueued_sql
    from queues.models import Job

    own = ["id", "broker_row", "run_after", "created_at"]
    copied = [f.column for f in Job._meta.concrete_fields if f.column not in own]
    counters, params = jobs_enqueued_sql(queue, job_type, "stored")
    sql = BACKLOG_JOBS.format(
        columns=", ".join(own + copied),
        copied=", ".join(f"j.{c}" for c in copied),
        counters=counters,
    )
    return sql, [job_type, *params]


def rescue_check_ms(db, queue="database"):
    """Execution time of the rescue's check on the database broker, by EXPLAIN ANALYZE."""
    from django.utils import timezone

    from queues.engine import postgresql
    from queues.maintenance.rescuer import stranded_before

    now = timezone.now()
    late = stranded_before(now)
    params = {
        "queue": queue,
        "now": now,
        "late": late,
        "late_epoch": int(late.timestamp()),
        "claimed_like": f"{queue}@%",
    }
    times = []
    for _ in range(3):
        plan = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + postgresql.RESCUE_NEEDED, params)
        times.append(plan.fetchone()[0][0]["Execution Time"])
    return statistics.median(times), plan_text(db, postgresql.RESCUE_NEEDED, params)


def plan_text(db, sql, params):
    rows = db.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + sql, params).fetchall()
    return "\n".join(r[0] for r in rows)


class Web:
    """gunicorn serving the app (4 sync workers), and the sessions that call it."""

    def __init__(self, token, session_key):
        import requests

        self.port = free_port()
        self.server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("gunicorn")),
                "slimy.wsgi",
                *("--bind", f"127.0.0.1:{self.port}", "--workers", "4", "--log-level", "warning"),
            ],
            cwd=ROOT,
            env=ENV,
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Token {token}"
        self.staff = requests.Session()
        self.staff.cookies.set("sessionid", session_key)
        with_retries(
            lambda: requests.get(f"{self.base}/healthz", timeout=5),
            tries=60,
            what="gunicorn start-up",
        )

    def timed(self, session, method, path):
        start = time.perf_counter()
        response = session.request(method, self.base + path, timeout=60)
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return elapsed

    def stop(self):
        self.server.terminate()
        self.server.wait(30)


def staff_session():
    """A signed-in operator with queues.view_job: the session key of a real login."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.test import Client

    operator = get_user_model().objects.create_user("bench-operator", is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="view_job"))
    client = Client()
    client.force_login(operator)
    return client.cookies["sessionid"].value


def point(bench, backlog, web, size, idle_seconds):
    from queues.core import pausing

    result = {"backlog": size}
    added, seconds = backlog.fill(size)
    result["build_s"], result["added"] = seconds, added
    progress(f"  backlog {size:,}: {added:,} added in {seconds:.0f} s; enqueueing the batch")
    ids = make_conversations(bench.db, bench.owner.pk, BATCH, 20)
    start = time.perf_counter()
    request_deletions(ids)
    result["enqueue_ms"] = (time.perf_counter() - start) * 1000 / BATCH
    cluster = qcluster("orm", bench.log_dir)
    try:
        drain = bench.measure(f"scaling drain at {size:,}", ids, cluster)
    finally:
        cluster.stop()
    result.update(drain)
    backlog.fill(size)  # what the drain took from the backlog, back

    progress(f"  backlog {size:,}: HTTP")
    targets = make_conversations(bench.db, bench.owner.pk, HTTP_DELETES, 10)
    for c in targets[:5]:  # warm every gunicorn worker up
        web.timed(web.api, "GET", f"/api/chat/conversations/{c}")
    deletes = [web.timed(web.api, "DELETE", f"/api/chat/conversations/{c}") for c in targets]
    result["delete_p50"], result["delete_p99"] = percentile(deletes, 50), percentile(deletes, 99)
    metrics = [web.timed(web.api, "GET", "/metrics") for _ in range(PAGE_READS)]
    dashboard = [web.timed(web.staff, "GET", "/dashboard/queues") for _ in range(PAGE_READS)]
    result["metrics_ms"], result["dashboard_ms"] = (
        statistics.median(metrics),
        statistics.median(dashboard),
    )
    result["rescue_check_ms"], result["rescue_plan"] = rescue_check_ms(bench.db)

    progress(f"  backlog {size:,}: idle cluster beside it, {idle_seconds} s")
    pausing.pause("database", detail="bench: idle beside a backlog")
    cluster = qcluster("orm", bench.log_dir)
    try:
        time.sleep(15)  # start-up and its first claims
        cluster.check()
        start = bench.sample(cluster.process.pid)
        time.sleep(idle_seconds)
        end = bench.sample(cluster.process.pid)
        cluster.check()
    finally:
        cluster.stop()
        pausing.resume("database", detail="bench")
    minutes = (end[0] - start[0]) / 60
    result["idle_statements_min"] = bench.pg.statements(start[3], end[3], WORKER_APP) / minutes
    result["idle_server_cpu_s_min"] = (end[2] - start[2]) / minutes
    return result


def scaling(bench, token, backlogs, idle_seconds):
    """One point per backlog size (ascending); a point that fails ends the scenario."""
    backlog = Backlog(bench.db)
    web = Web(token, staff_session())
    points = []
    try:
        for size in sorted(backlogs):
            progress(f"scaling: backlog {size:,}")
            points.append(point(bench, backlog, web, size, idle_seconds))
    finally:
        web.stop()
    return points


FIGURES = (
    ("drain jobs/s", "rate", "{:.0f}"),
    ("CPU ms/job (workers + PostgreSQL)", "cpu", "{:.2f}"),
    ("enqueue ms/job", "enqueue_ms", "{:.2f}"),
    ("DELETE p50 ms", "delete_p50", "{:.1f}"),
    ("DELETE p99 ms", "delete_p99", "{:.1f}"),
    ("/metrics p50 ms", "metrics_ms", "{:.1f}"),
    ("dashboard p50 ms", "dashboard_ms", "{:.1f}"),
    ("idle statements/min", "idle_statements_min", "{:.1f}"),
    ("idle server CPU s/min", "idle_server_cpu_s_min", "{:.2f}"),
    ("rescue check ms (EXPLAIN ANALYZE)", "rescue_check_ms", "{:.1f}"),
)


def print_scaling(points):
    for p in points:
        p["cpu"] = p["cpu_workers"] + p["cpu_server"]
    base = points[0]
    print("| figure | " + " | ".join(f"{p['backlog']:,}" for p in points) + " |")
    print("|---|" + "---|" * len(points))
    for label, key, fmt in FIGURES:
        cells = []
        for p in points:
            cell = fmt.format(p[key])
            if p is not base and base[key]:
                cell += f" ({p[key] / base[key]:.2f}x)"
            cells.append(cell)
        print(f"| {label} | " + " | ".join(cells) + " |")
    builds = ", ".join(f"{p['added']:,} jobs in {p['build_s']:.0f} s" for p in points)
    print()
    print(f"Backlog built: {builds}.")
    if os.environ.get("BENCH_PLANS"):
        for p in points:
            print(f"\nRescue check at {p['backlog']:,}:\n{p['rescue_plan']}")
