"""Every scenario of the queue's performance targets, measured against its reference in one run.

    .venv/bin/python bench/run.py   # PostgreSQL at BENCH_DATABASE_URL (default .../slimy_bench)

The database named by BENCH_DATABASE_URL is dropped and created again: give the bench its own.
References run in the same process, on the same database: raw SQL through psycopg with the same
number of clients, and a qcluster on django-q2's stock ORM broker with its defaults
(`QUEUE_BROKER=stock`). Prints one table; docs/benchmarks.md records the latest.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/slimy_bench"
ENV = {
    **os.environ,
    "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
    "SECRET_KEY": os.environ.get("SECRET_KEY") or "slimy-bench-secret-key-" + "0123456789" * 4,
    "ALLOWED_HOSTS": "127.0.0.1",
    # gunicorn serves plain HTTP on loopback here; production redirects to HTTPS.
    "SECURE_SSL_REDIRECT": "0",
    "PYTHONUNBUFFERED": "1",
    # The Redis scenario's own database, flushed before it runs.
    "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
}
WORKERS = 10  # the default concurrency on PostgreSQL (settings.QUEUE_DEFAULTS)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def recreate_database():
    url = urlsplit(ENV["DATABASE_URL"])
    name = url.path.lstrip("/")
    admin = urlunsplit(url._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    manage("migrate", "-v0")
    return admin, name


def manage(*args):
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=ENV, check=True)


def connect():
    return psycopg.connect(ENV["DATABASE_URL"], autocommit=True)


def make_conversations(db, owner_id, count, messages):
    """`count` conversations of `messages` messages each, inserted set-wise; returns their ids."""
    ids = [
        row[0]
        for row in db.execute(
            "INSERT INTO chat_conversation (owner_id, title, created_at, updated_at) "
            "SELECT %s, 'bench ' || g, now(), now() FROM generate_series(1, %s) g RETURNING id",
            [owner_id, count],
        )
    ]
    db.execute(
        "INSERT INTO chat_message (conversation_id, role, content, created_at) "
        "SELECT c, 'user', 'message number ' || g, now() "
        "FROM unnest(%s::bigint[]) c, generate_series(1, %s) g",
        [ids, messages],
    )
    db.execute("ANALYZE chat_message")
    return ids


def remaining(db, ids):
    return db.execute(
        "SELECT count(*) FROM chat_conversation WHERE id = ANY(%s)", [ids]
    ).fetchone()[0]


class Cluster:
    """One `manage.py qcluster` process group, on our broker or django-q2's stock one.

    Always started with jobs waiting: their first completion shows the cluster is up.
    """

    def __init__(self, broker, log_dir):
        self.log_path = log_dir / f"qcluster-{broker}.log"
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env={**ENV, "QUEUE_BROKER": broker},
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def worker_pids(self):
        out = subprocess.run(["ps", "-o", "pid=,ppid=", "-e"], capture_output=True, text=True)
        children = {}
        for line in out.stdout.splitlines():
            pid, ppid = map(int, line.split())
            children.setdefault(ppid, []).append(pid)
        return [w for s in children.get(self.process.pid, []) for w in children.get(s, [])]

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def memory_kb(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def request_deletions(ids, owner):
    """Ask for deletion the way the API does (mark + enqueue, one transaction per conversation)."""
    from chat.models import Conversation
    from chat.services import request_conversation_deletion

    for conversation in Conversation.objects.filter(pk__in=ids):
        request_conversation_deletion(conversation, request_id="bench")


def watch_drain(db, ids, timeout=600):
    """Jobs/s from the first conversation gone to the last (the cluster's start excluded)."""
    total, first = len(ids), None
    deadline = time.monotonic() + timeout
    while True:
        left = remaining(db, ids)
        now = time.perf_counter()
        if first is None and left < total:
            first = (now, left)
        if left == 0:
            return first[1] / (now - first[0])
        if time.monotonic() > deadline:
            raise RuntimeError(f"drain stalled with {left} conversations left")
        time.sleep(0.02)


def drain_raw(db, owner_id, count, messages, clients):
    ids = make_conversations(db, owner_id, count, messages)
    todo = list(ids)
    lock = threading.Lock()

    def client():
        with connect() as conn:
            while True:
                with lock:
                    if not todo:
                        return
                    conversation_id = todo.pop()
                with conn.transaction():
                    conn.execute(
                        "DELETE FROM chat_message WHERE conversation_id = %s", [conversation_id]
                    )
                    conn.execute("DELETE FROM chat_conversation WHERE id = %s", [conversation_id])

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count / (time.perf_counter() - start)


def request_deletions_on_redis(ids):
    """As `request_deletions`, from a process whose queues are on Redis (a settings switch)."""
    import redis

    redis.Redis.from_url(ENV["REDIS_URL"]).flushdb()
    code = (
        "from chat.models import Conversation\n"
        "from chat.services import request_conversation_deletion\n"
        f"for c in Conversation.objects.filter(pk__in={list(ids)!r}):\n"
        "    request_conversation_deletion(c, request_id='bench')\n"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={**ENV, "QUEUE_BROKER": "redis"},
        check=True,
    )


def drain_cluster(db, owner, count, messages, broker, log_dir):
    ids = make_conversations(db, owner.pk, count, messages)
    if broker == "redis":
        request_deletions_on_redis(ids)
    else:
        request_deletions(ids, owner)
    cluster = Cluster(broker, log_dir)
    try:
        return watch_drain(db, ids), cluster
    except BaseException:
        cluster.stop()
        raise


def idle_latency(db, owner, samples):
    """Milliseconds from the deletion request's commit to the conversation gone, one at a time."""
    latencies = []
    for _ in range(samples):
        (conversation_id,) = make_conversations(db, owner.pk, 1, 20)
        time.sleep(0.3)  # let the cluster go idle
        request_deletions([conversation_id], owner)
        start = time.perf_counter()
        while db.execute(
            "SELECT 1 FROM chat_conversation WHERE id = %s", [conversation_id]
        ).fetchone():
            time.sleep(0.001)
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def idle_statements(admin_url, name, seconds):
    """Transactions per second on the bench database while nothing but the cluster is connected.

    Each SQL statement in autocommit is one transaction; read from another database so the probe
    is not counted. Backends flush their counters up to 10 s late, so the caller has let the
    cluster idle for a while: in a steady state the lag cancels out.
    """
    query = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        before = conn.execute(query, [name]).fetchone()[0]
        time.sleep(seconds)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        after = conn.execute(query, [name]).fetchone()[0]
    return (after - before) / seconds


def big_delete(db, owner, cluster, messages):
    from queues.models import Job

    (raw_id,) = make_conversations(db, owner.pk, 1, messages)
    start = time.perf_counter()
    with db.transaction():
        db.execute("DELETE FROM chat_message WHERE conversation_id = %s", [raw_id])
        db.execute("DELETE FROM chat_conversation WHERE id = %s", [raw_id])
    raw_seconds = time.perf_counter() - start

    (job_conversation,) = make_conversations(db, owner.pk, 1, messages)
    rss_before = {}
    for pid in cluster.worker_pids():
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart VmHWM from the current RSS
        rss_before[pid] = memory_kb(pid, "VmRSS")
    request_deletions([job_conversation], owner)
    job = Job.objects.get(subject=f"conversation:{job_conversation}")
    while not Job.objects.filter(pk=job.pk, status="succeeded").exists():
        time.sleep(0.05)
    job.refresh_from_db()
    worker = int(job.worker.rsplit(":", 1)[1])
    growth_mb = (memory_kb(worker, "VmHWM") - rss_before[worker]) / 1024
    return (job.finished_at - job.started_at).total_seconds(), raw_seconds, growth_mb


def http_latency(db, owner, token, sizes, client_counts, rounds):
    """DELETE and GET of one conversation through gunicorn: {(size, clients, method): stats}."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "slimy.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "4",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=ENV,
        start_new_session=True,
    )
    import requests

    base = f"http://127.0.0.1:{port}/api/chat/conversations/"
    local = threading.local()

    def call(method, conversation_id):
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["Authorization"] = f"Token {token}"
        start = time.perf_counter()
        response = local.session.request(method, f"{base}{conversation_id}")
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(
                f"{method} {conversation_id}: {response.status_code} {response.text}"
            )
        return elapsed

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base, timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        results = {}
        most = max(client_counts)
        for size in sizes:
            ids = make_conversations(db, owner.pk, most, size)
            for clients in client_counts:
                with ThreadPoolExecutor(clients) as pool:
                    for method in ("GET", "DELETE"):
                        for _ in range(3 if clients > 1 else 20):  # warm every gunicorn worker
                            list(pool.map(lambda c, m=method: call(m, c), ids[:clients]))
                            reset(db, ids)
                        latencies, busy = [], 0.0
                        for _ in range(rounds[clients]):
                            start = time.perf_counter()
                            latencies += pool.map(lambda c, m=method: call(m, c), ids[:clients])
                            busy += time.perf_counter() - start
                            reset(db, ids)
                        results[(size, clients, method)] = {
                            "p50": percentile(latencies, 50) * 1000,
                            "p99": percentile(latencies, 99) * 1000,
                            "rps": len(latencies) / busy,
                        }
        return results
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def reset(db, ids):
    """Undo DELETE requests (no cluster runs meanwhile), so the same conversations serve again."""
    db.execute(
        "UPDATE chat_conversation SET deletion_requested_at = NULL WHERE id = ANY(%s)", [ids]
    )
    db.execute("DELETE FROM django_q_ormq")
    db.execute("DELETE FROM queues_job")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--big", type=int, default=1_000_000, help="messages of the big one")
    parser.add_argument("--large", type=int, default=100_000, help="messages, HTTP scenario")
    parser.add_argument("--idle-seconds", type=int, default=20)
    args = parser.parse_args()

    admin_url, name = recreate_database()
    os.environ.update({k: ENV[k] for k in ("DATABASE_URL", "SECRET_KEY")})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "slimy.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    owner = get_user_model().objects.create_user("bench", password="bench-password-123")
    token = Token.objects.create(user=owner).key
    log_dir = Path(os.environ.get("BENCH_LOG_DIR", "/tmp"))
    db = connect()
    rows = []

    def row(what, ours, reference, ratio, target, met):
        rows.append(
            (what, ours, reference, ratio, target, "" if met is None else "yes" if met else "NO")
        )
        print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)

    raw = drain_raw(db, owner.pk, args.jobs, 20, WORKERS)
    stock_rate, stock = drain_cluster(db, owner, args.jobs, 20, "stock", log_dir)
    try:
        stock_latency = idle_latency(db, owner, 50)
        time.sleep(12)
        stock_idle = idle_statements(admin_url, name, args.idle_seconds)
    finally:
        stock.stop()
    rate, ours = drain_cluster(db, owner, args.jobs, 20, "orm", log_dir)
    try:
        row(
            f"1. drain {args.jobs} jobs x 20 msgs, {WORKERS} workers (jobs/s)",
            f"{rate:.0f}",
            f"raw SQL {raw:.0f}; stock django-q2 {stock_rate:.0f}",
            f"{rate / raw:.2f} x raw",
            ">= 0.70 x raw",
            rate >= 0.7 * raw,
        )
        latency = idle_latency(db, owner, 50)
        row(
            "2. idle latency enqueue -> gone, p50 / p95 (ms)",
            f"{percentile(latency, 50):.1f} / {percentile(latency, 95):.1f}",
            f"stock {percentile(stock_latency, 50):.0f} / {percentile(stock_latency, 95):.0f}",
            "",
            "p50 <= 25 ms",
            percentile(latency, 50) <= 25,
        )
        time.sleep(12)
        idle = idle_statements(admin_url, name, args.idle_seconds)
        row(
            "5. idle cluster, SQL statements/s",
            f"{idle:.2f}",
            f"stock {stock_idle:.1f}",
            "",
            "<= 1/s",
            idle <= 1,
        )
        job_seconds, raw_seconds, growth = big_delete(db, owner, ours, args.big)
        row(
            f"4. one conversation of {args.big:,} msgs: job time (s)",
            f"{job_seconds:.2f}",
            f"raw SQL {raw_seconds:.2f}",
            f"{job_seconds / raw_seconds:.2f} x raw",
            "<= 1.5 x raw",
            job_seconds <= 1.5 * raw_seconds,
        )
        row("4. worker peak RSS growth (MB)", f"{growth:.1f}", "", "", "<= 20 MB", growth <= 20)
    finally:
        ours.stop()

    redis_rate, on_redis = drain_cluster(db, owner, args.jobs, 20, "redis", log_dir)
    on_redis.stop()
    row(
        f"1b. drain {args.jobs} jobs on the Redis broker (QUEUE_BROKER=redis) (jobs/s)",
        f"{redis_rate:.0f}",
        f"raw SQL {raw:.0f}; ours on PostgreSQL {rate:.0f}",
        f"{redis_rate / raw:.2f} x raw",
        "none (for comparison)",
        None,
    )

    http = http_latency(db, owner, token, (10, args.large), (1, 16), {1: 100, 16: 8})
    for clients in (1, 16):
        for size in (10, args.large):
            get, delete = http[(size, clients, "GET")], http[(size, clients, "DELETE")]
            row(
                f"3. DELETE, {size:,} msgs, {clients} client(s): p50 / p99 ms, req/s",
                f"{delete['p50']:.1f} / {delete['p99']:.1f}, {delete['rps']:.0f}",
                f"GET {get['p50']:.1f} / {get['p99']:.1f}, {get['rps']:.0f}",
                f"{delete['p50'] / get['p50']:.2f} x GET",
                "p50 <= 1.5 x GET",
                delete["p50"] <= 1.5 * get["p50"],
            )
        small, large = http[(10, clients, "DELETE")], http[(args.large, clients, "DELETE")]
        spread = large["p50"] / small["p50"] - 1
        row(
            f"3. DELETE p50, {args.large:,} vs 10 msgs, {clients} client(s)",
            f"{large['p50']:.1f} vs {small['p50']:.1f} ms",
            "",
            f"{spread:+.0%}",
            "within 15%",
            abs(spread) <= 0.15,
        )

    with connect() as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"PostgreSQL {version}, python {sys.version.split()[0]}"
    )
    headers = ("scenario", "ours", "reference (same run)", "ratio", "target", "met")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for line in sorted(rows, key=lambda r: r[0][0]):  # by scenario number, stable
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
