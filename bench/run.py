"""Every scenario of the queue's performance targets, measured against its references in one run.

    .venv/bin/python bench/run.py            # ours, raw SQL, stock django-q2
    .venv/bin/python bench/run.py --peers    # also Celery (Redis) and Procrastinate
    .venv/bin/python bench/run.py --only scaling --backlogs 1000,100000,1000000   # bench/scaling.py
    .venv/bin/python bench/run.py --only busy        # the API during a drain: bench/busy_api.py
    .venv/bin/pip install -r bench/requirements.txt   # once, for --peers and py-spy

Everything runs on a throwaway PostgreSQL server the bench starts itself (bench/pg_server.py):
it logs every statement, so statements per job are counted from its log, and its backends are
the bench's alone, so their CPU is read from /proc. The machine's server is never touched.
Workers of every system connect as `application_name=bench-worker`; "statements per job" counts
what those connections sent while the jobs drained, "CPU per job" the worker processes plus the
server's processes over the same window. Every system logs as configured by default (INFO, to a
file in BENCH_LOG_DIR). Progress goes to stderr; a scenario that fails prints
its error in its row and the others still run. docs/benchmarks.md records the latest table.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pg_server import ThrowawayPostgres, free_port  # noqa: E402

# Run as a script, this module is also `bench.run` to the scenarios in other modules.
sys.modules.setdefault("bench.run", sys.modules[__name__])

WORKER_APP = "bench-worker"
WORKERS = 10  # the default concurrency on PostgreSQL (settings.QUEUE_DEFAULTS), for every system
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ENV = {
    **os.environ,
    "SECRET_KEY": os.environ.get("SECRET_KEY") or "slimy-bench-secret-key-" + "0123456789" * 4,
    "ALLOWED_HOSTS": "127.0.0.1",
    # gunicorn serves plain HTTP on loopback here; production redirects to HTTPS.
    "SECURE_SSL_REDIRECT": "0",
    "PYTHONUNBUFFERED": "1",
    # The Redis scenarios' own databases, flushed before they run.
    "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
    "BENCH_CELERY_BROKER": os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/15"),
}
_started = time.monotonic()


def progress(message):
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --- CPU from /proc ---------------------------------------------------------------------------


def process_stat(pid):
    """(ppid, CPU seconds of the process plus its reaped children), or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime, stime, cutime, cstime are fields 14-17.
    return int(fields[1]), sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def tree_cpu(root, exclude=()):
    """CPU seconds used so far by `root` and its descendants, including those already reaped."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := process_stat(entry.name)) is not None:
            stats[int(entry.name)] = stat
    children = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in exclude:
            total += stats[pid][1]
        todo += children.get(pid, [])
    return total


def memory_kb(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# --- Data -------------------------------------------------------------------------------------


def make_conversations(db, owner_id, count, messages):
    """`count` conversations of `messages` messages each, inserted set-wise; returns their ids."""
    ids = [
        row[0]
        for row in db.execute(
            "INSERT INTO chat_conversation"
            " (owner_id, title, created_at, updated_at, message_count)"
            " SELECT %s, 'bench ' || g, now(), now(), %s FROM generate_series(1, %s) g"
            " RETURNING id",
            [owner_id, messages, count],
        )
    ]
    db.execute(
        "INSERT INTO chat_message (conversation_id, role, content, created_at) "
        "SELECT c, 'user', 'message number ' || g, now() "
        "FROM unnest(%s::bigint[]) c, generate_series(1, %s) g",
        [ids, messages],
    )
    db.execute("ANALYZE chat_message")
    ids.sort()
    assert ids[-1] - ids[0] + 1 == len(ids), "one batch's ids are consecutive (`remaining`)"
    return ids


def remaining(db, ids):
    """How many of `ids` (one `make_conversations` batch: consecutive ids) still exist.

    A range scan: the watcher polls every 20 ms on the same 2 cores as the drain, and
    `id = ANY(2,000 ids)` cost 7 ms of server CPU per poll, a quarter of a core taken from
    the systems measured.
    """
    return db.execute(
        "SELECT count(*) FROM chat_conversation WHERE id BETWEEN %s AND %s", [ids[0], ids[-1]]
    ).fetchone()[0]


def request_deletions(ids):
    """Ask for deletion the way the API does (mark + enqueue, one transaction per conversation)."""
    from chat.models import Conversation
    from chat.services import request_conversation_deletion

    for conversation in Conversation.objects.filter(pk__in=ids):
        request_conversation_deletion(conversation, request_id="bench")


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
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=ROOT,
        env={**ENV, "QUEUE_BROKER": "redis"},
        check=True,
    )


# --- Worker processes -------------------------------------------------------------------------


class Workers:
    """One process group of workers (a qcluster, a Celery or a Procrastinate worker)."""

    def __init__(self, name, command, log_dir, env=None):
        self.name = name
        self.log_path = log_dir / f"bench-{name}.log"
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**ENV, "PGAPPNAME": WORKER_APP, **(env or {})},
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check(self):
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(
                f"{self.name} exited ({self.process.returncode}): {' / '.join(tail)}"
            )

    def worker_pids(self):
        out = subprocess.run(["ps", "-o", "pid=,ppid=", "-e"], capture_output=True, text=True)
        children = {}
        for line in out.stdout.splitlines():
            pid, ppid = map(int, line.split())
            children.setdefault(ppid, []).append(pid)
        return [w for s in children.get(self.process.pid, []) for w in children.get(s, [])]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# The environment of a cluster on each broker: ours (`orm`, `redis`) are chosen by settings;
# stock django-q2, the reference, by a settings module of its own.
CLUSTER_ENV = {
    "orm": {"QUEUE_BROKER": "orm"},
    "redis": {"QUEUE_BROKER": "redis"},
    "stock": {"DJANGO_SETTINGS_MODULE": "bench.stock_settings"},
}


def qcluster(broker, log_dir, env=None):
    command = [sys.executable, "manage.py", "qcluster"]
    return Workers(f"qcluster-{broker}", command, log_dir, {**CLUSTER_ENV[broker], **(env or {})})


# --- Drains -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, pg, db, owner, log_dir, profile=None, perf=None):
        self.pg, self.db, self.owner, self.log_dir = pg, db, owner, log_dir
        self.profile, self.perf = profile, perf
        self.watcher_backend = db.execute("SELECT pg_backend_pid()").fetchone()[0]

    def sample(self, root):
        """(time, worker CPU, server CPU, log offset): the counters a drain is measured by."""
        workers = tree_cpu(root) if root is not None else sum(os.times()[:2])
        server = tree_cpu(self.pg.postmaster_pid, exclude={self.watcher_backend})
        return time.perf_counter(), workers, server, self.pg.log_offset()

    def measure(self, name, ids, workers, root=None, timeout=600):
        """Watch `ids` disappear; rate, CPU and statements from the first one gone to the last.

        The window starts at the first completion, so worker start-up is not counted.
        """
        total, first, last_report = len(ids), None, time.monotonic()
        deadline = time.monotonic() + timeout
        root = workers.process.pid if workers is not None else root
        while True:
            left = remaining(self.db, ids)
            if first is None and left < total:
                first, first_left = self.sample(root), left
            if left == 0:
                break
            if workers is not None:
                workers.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"drain stalled with {left} of {total} left")
            if time.monotonic() - last_report >= 2:
                progress(f"  {name}: {total - left}/{total} done")
                last_report = time.monotonic()
            time.sleep(0.02)
        end = self.sample(root)
        jobs = first_left
        seconds = end[0] - first[0]
        return {
            "rate": jobs / seconds,
            "cpu_workers": (end[1] - first[1]) / jobs * 1000,
            "cpu_server": (end[2] - first[2]) / jobs * 1000,
            "statements": self.pg.statements(first[3], end[3], WORKER_APP) / jobs,
        }

    def drain_raw(self, count, messages):
        """The limit: psycopg clients deleting directly, one transaction per conversation."""
        ids = make_conversations(self.db, self.owner.pk, count, messages)
        todo = list(ids)
        lock = threading.Lock()
        ready = threading.Barrier(WORKERS + 1)

        def client():
            with psycopg.connect(
                self.pg.url(self.db.info.dbname), autocommit=True, application_name=WORKER_APP
            ) as conn:
                ready.wait()
                while True:
                    with lock:
                        if not todo:
                            return
                        conversation_id = todo.pop()
                    with conn.transaction():
                        conn.execute(
                            "DELETE FROM chat_message WHERE conversation_id = %s", [conversation_id]
                        )
                        conn.execute(
                            "DELETE FROM chat_conversation WHERE id = %s", [conversation_id]
                        )

        threads = [threading.Thread(target=client) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        # The clients are threads of this process: CPU from os.times(), root=None.
        start = self.sample(None)
        ready.wait()
        for thread in threads:
            thread.join()
        end = self.sample(None)
        return {
            "rate": count / (end[0] - start[0]),
            "cpu_workers": (end[1] - start[1]) / count * 1000,
            "cpu_server": (end[2] - start[2]) / count * 1000,
            "statements": self.pg.statements(start[3], end[3], WORKER_APP) / count,
        }

    def drain_cluster(self, broker, count, messages, profiled=True):
        """Jobs enqueued first, then the cluster started: returns (result, running cluster).
        `profiled`: py-spy and perf record it, with `--profile` and `--perf`."""
        ids = make_conversations(self.db, self.owner.pk, count, messages)
        if broker == "redis":
            request_deletions_on_redis(ids)
        else:
            request_deletions(ids)
        cluster = qcluster(broker, self.log_dir)
        profilers = self.start_profilers(cluster) if broker == "orm" and profiled else {}
        try:
            return self.measure(f"qcluster ({broker})", ids, cluster), cluster
        except BaseException:
            cluster.stop()
            raise
        finally:
            for path, profiler in profilers.items():
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
                progress(f"  profile: {path}")

    def drop_broker_rows(self):
        """Remove the rows a stopped reference cluster left: stock django-q2's monitor lags
        behind its workers under load and is cut off at the stop, so rows of jobs that ran stay
        unacknowledged and would come back after its visibility timeout (150 s), in the middle
        of our cluster's scenarios (its idle statements)."""
        self.db.execute("DELETE FROM django_q_ormq")

    def start_profilers(self, cluster):
        """{path: recorder}: py-spy over every process of the cluster, as collapsed stacks
        (`--profile PATH`), and perf over the whole machine (`--perf PATH`: PostgreSQL's own
        functions and the kernel's share, which py-spy cannot see; `perf report -i PATH`)."""
        commands = {}
        if self.profile:
            command = [str(Path(sys.executable).with_name("py-spy")), "record", "--subprocesses"]
            command += ["--nonblocking", "--gil", "--format", "raw", "--rate", "250"]
            command += ["--pid", str(cluster.process.pid), "--output", self.profile]
            commands[self.profile] = command
        if self.perf:
            commands[self.perf] = ["perf", "record", "-a", "-g", "-F", "999", "-o", self.perf]
        return {
            path: subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for path, command in commands.items()
        }

    def drain_celery(self, count, messages):
        import redis

        from bench import peers

        ids = make_conversations(self.db, self.owner.pk, count, messages)
        redis.Redis.from_url(ENV["BENCH_CELERY_BROKER"]).flushdb()
        self._mark_deleted(ids)
        for conversation_id in ids:
            peers.celery_delete.apply_async((conversation_id, self.owner.pk), queue=peers.QUEUE)
        command = [
            *(sys.executable, "-m", "celery", "-A", "bench.peers", "worker"),
            *("--pool", "prefork", "--concurrency", str(WORKERS), "-Q", peers.QUEUE),
            *("--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"),
        ]
        return self._drain_peer("celery", command, ids)

    def drain_procrastinate(self, count, messages):
        from bench import peers

        ids = make_conversations(self.db, self.owner.pk, count, messages)
        self._mark_deleted(ids)
        with peers.procrastinate_app.open():
            peers.procrastinate_app.schema_manager.apply_schema()
            peers.procrastinate_delete.batch_defer(
                *({"conversation_id": c, "user_id": self.owner.pk} for c in ids)
            )
        command = [sys.executable, "bench/peers.py", "procrastinate", str(WORKERS)]
        return self._drain_peer("procrastinate", command, ids)

    def _mark_deleted(self, ids):
        """What the API does before enqueueing (peers only enqueue the deletion itself)."""
        self.db.execute(
            "UPDATE chat_conversation SET deletion_requested_at = now() WHERE id = ANY(%s)", [ids]
        )

    def _drain_peer(self, name, command, ids):
        workers = Workers(name, command, self.log_dir)
        try:
            return self.measure(name, ids, workers)
        finally:
            workers.stop()

    # --- Latency, idle, big ----------------------------------------------------------------

    def idle_latency(self, samples):
        """Milliseconds from the deletion request's commit to the conversation gone."""
        latencies = []
        for _ in range(samples):
            (conversation_id,) = make_conversations(self.db, self.owner.pk, 1, 20)
            time.sleep(0.3)  # let the cluster go idle
            request_deletions([conversation_id])
            start = time.perf_counter()
            while self.db.execute(
                "SELECT 1 FROM chat_conversation WHERE id = %s", [conversation_id]
            ).fetchone():
                time.sleep(0.001)
            latencies.append((time.perf_counter() - start) * 1000)
        return latencies

    def idle_statements(self, seconds):
        """Statements per second the idle cluster sends (from the server's log)."""
        start = self.pg.log_offset()
        time.sleep(seconds)
        return self.pg.statements(start, self.pg.log_offset(), WORKER_APP) / seconds

    def big_delete(self, cluster, messages, pairs=2):
        """(job seconds, raw SQL seconds, worker peak RSS growth in MB) for one huge conversation.

        Raw and job alternate `pairs` times and the fastest of each counts: loading the rows
        takes long enough for the shared machine's load to change between the two.
        """
        job_seconds, raw_seconds, growth = [], [], 0.0
        for done in range(pairs):
            progress(f"  {messages:,} messages, pair {done + 1}/{pairs}: raw SQL, then our job")
            raw_seconds.append(self.big_raw(messages))
            seconds, grew = self.big_job(cluster, messages)
            job_seconds.append(seconds)
            growth = max(growth, grew)
        return min(job_seconds), min(raw_seconds), growth

    def big_raw(self, messages):
        (raw_id,) = make_conversations(self.db, self.owner.pk, 1, messages)
        self.db.execute("CHECKPOINT")
        start = time.perf_counter()
        with self.db.transaction():
            self.db.execute("DELETE FROM chat_message WHERE conversation_id = %s", [raw_id])
            self.db.execute("DELETE FROM chat_conversation WHERE id = %s", [raw_id])
        return time.perf_counter() - start

    def big_job(self, cluster, messages):
        from chat.models import Conversation
        from queues.models import Job

        (job_conversation,) = make_conversations(self.db, self.owner.pk, 1, messages)
        self.db.execute("CHECKPOINT")
        rss_before = {}
        for pid in cluster.worker_pids():
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart VmHWM from the current RSS
            rss_before[pid] = memory_kb(pid, "VmRSS")
        request_deletions([job_conversation])
        job = Job.objects.get(subject=Conversation.subject_for(job_conversation))
        deadline = time.monotonic() + 300
        while not Job.objects.filter(pk=job.pk, status="succeeded").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {messages:,}-message deletion did not finish")
            time.sleep(0.05)
        job.refresh_from_db()
        worker = int(job.worker.rsplit(":", 1)[1])
        growth_mb = (memory_kb(worker, "VmHWM") - rss_before[worker]) / 1024
        return (job.finished_at - job.started_at).total_seconds(), growth_mb


# --- HTTP -------------------------------------------------------------------------------------


def with_retries(call, tries=5, what="request"):
    """Warm-up calls on a busy machine may time out: try again, a little later each time."""
    for attempt in range(1, tries + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == tries:
                raise RuntimeError(f"{what} failed {tries} times: {exc}") from exc
            progress(f"  {what} failed ({exc.__class__.__name__}), retrying")
            time.sleep(0.5 * attempt)


def http_latency(bench, token, sizes, client_counts, rounds):
    """DELETE and GET of one conversation through gunicorn: {(size, clients, method): stats}."""
    import requests

    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "slimy.wsgi",
            *("--bind", f"127.0.0.1:{port}", "--workers", "4", "--log-level", "warning"),
        ],
        cwd=ROOT,
        env=ENV,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api/chat/conversations/"
    local = threading.local()

    def call(method, conversation_id, timeout=30):
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["Authorization"] = f"Token {token}"
        start = time.perf_counter()
        response = local.session.request(method, f"{base}{conversation_id}", timeout=timeout)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(
                f"{method} {conversation_id}: {response.status_code} {response.text}"
            )
        return elapsed

    try:
        with_retries(lambda: requests.get(base, timeout=5), tries=60, what="gunicorn start-up")
        most = max(client_counts)
        sets = {}
        for size in sizes:
            progress(f"  HTTP: {most} conversations of {size:,} messages")
            sets[size] = make_conversations(bench.db, bench.owner.pk, most, size)
        every = [c for ids in sets.values() for c in ids]
        # Measure the steady state, not the flush of the rows just loaded: vacuum them (as
        # autovacuum soon would) and write them out, so no checkpoint competes with commits.
        bench.db.execute("VACUUM ANALYZE chat_message")
        bench.db.execute("CHECKPOINT")
        results = {}
        # Side by side: each round sends every kind of request once per client, one kind after
        # the other, so all kinds see the same load on the shared machine.
        kinds = [(size, method) for method in ("GET", "DELETE") for size in sizes]
        for clients in client_counts:

            def one_of_each(pool, timeout, latencies=None, busy=None, clients=clients):
                reset(bench.db, every)
                for size, method in kinds:
                    start = time.perf_counter()
                    took = one_round(pool, call, method, sets[size][:clients], timeout)
                    if latencies is not None:
                        latencies[size, method] += took
                        busy[size, method] += time.perf_counter() - start

            with ThreadPoolExecutor(clients) as pool:
                progress(f"  HTTP: {clients} client(s), warm-up")
                for _ in range(3 if clients > 1 else 20):  # warm every gunicorn worker
                    with_retries(partial(one_of_each, pool, 10), what="warm-up round")
                latencies = {kind: [] for kind in kinds}
                busy = dict.fromkeys(kinds, 0.0)
                last_report = time.monotonic()
                for done in range(1, rounds[clients] + 1):
                    one_of_each(pool, 30, latencies, busy)
                    if time.monotonic() - last_report >= 2:
                        progress(f"  HTTP: {clients} client(s), round {done}/{rounds[clients]}")
                        last_report = time.monotonic()
            for (size, method), values in latencies.items():
                results[(size, clients, method)] = {
                    "p50": percentile(values, 50) * 1000,
                    "p99": percentile(values, 99) * 1000,
                    "rps": len(values) / busy[size, method],
                }
        reset(bench.db, every)
        return results
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def one_round(pool, call, method, ids, timeout):
    """One request per id, concurrently: their latencies."""
    return list(pool.map(lambda c: call(method, c, timeout), ids))


def reset(db, ids):
    """Undo DELETE requests (no cluster runs meanwhile), so the same conversations serve again."""
    db.execute(
        "UPDATE chat_conversation SET deletion_requested_at = NULL WHERE id = ANY(%s)", [ids]
    )
    db.execute("DELETE FROM django_q_ormq")
    db.execute("DELETE FROM queues_job")


# --- The run ----------------------------------------------------------------------------------


class Table:
    """Rows of one run; a scenario that raises gets its error in its row, the rest go on."""

    def __init__(self):
        self.drains, self.targets = {}, []
        self.rounds = []  # (raw SQL, ours) results of each paired round that both finished

    def scenario(self, name, fn, *args):
        progress(f"{name}: starting")
        try:
            result = fn(*args)
        except Exception as exc:
            progress(f"{name}: FAILED: {exc.__class__.__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
            return ScenarioError(f"{exc.__class__.__name__}: {exc}".replace("|", "/")[:200])
        progress(f"{name}: done")
        return result

    def target(self, what, ours, reference, ratio, target, met):
        met = "" if met is None else "yes" if met else "NO"
        self.targets.append((what, ours, reference, ratio, target, met))
        progress(" | ".join(map(str, self.targets[-1])))


class ScenarioError:
    """A failed scenario's stand-in: the rows built from it print its error instead."""

    def __init__(self, message):
        self.message = message


def row_of(table, what, fn, *needs):
    """Add the target row `fn()` builds from `needs`, or one carrying the error of a failed one."""
    failed = [n for n in needs if isinstance(n, ScenarioError) or n is None]
    if failed:
        error = failed[0].message if failed[0] is not None else "not measured"
        table.target(what, f"ERROR: {error}", "", "", "", False)
    else:
        table.target(*fn())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per drain")
    parser.add_argument("--stock-jobs", type=int, default=500, help="jobs for stock django-q2")
    parser.add_argument("--big", type=int, default=1_000_000, help="messages of the big one")
    parser.add_argument("--large", type=int, default=100_000, help="messages, HTTP scenario")
    # Two whole minutes: the sweeper and the rescue are periodic jobs fired once a minute (each a
    # job: its insert, claim, begin and outcome), the prune every five.
    parser.add_argument("--idle-seconds", type=int, default=120)
    parser.add_argument("--peers", action="store_true", help="also Celery and Procrastinate")
    parser.add_argument(
        "--rounds", type=int, default=3, help="paired drains of raw SQL and ours (medians)"
    )
    parser.add_argument(
        "--profile", metavar="PATH", help="py-spy our drain's processes into PATH (skews its CPU)"
    )
    parser.add_argument(
        "--perf", metavar="PATH", help="perf record the whole machine during that drain (root)"
    )
    parser.add_argument("--save-log", metavar="PATH", help="keep the server's statement log")
    parser.add_argument(
        "--only",
        default="drain,stock,redis,idle,big,http",
        help="comma-separated subset of: drain,stock,redis,idle,big,http (ours always drains);"
        " or scaling, or busy, alone (docs/benchmarks.md)",
    )
    parser.add_argument(
        "--busy-jobs", type=int, default=20_000, help="busy: deletions drained while measuring"
    )
    parser.add_argument(
        "--backlogs",
        default="1000,100000,1000000",
        help="scaling: the backlogs of waiting jobs measured, the first the reference",
    )
    args = parser.parse_args()
    # A TERM (Ctrl-C alike) still stops the workers and removes the throwaway server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    only = set(args.only.split(","))
    log_dir = Path(os.environ.get("BENCH_LOG_DIR", "/tmp"))

    progress("starting a throwaway PostgreSQL server")
    with ThrowawayPostgres() as pg:
        url = pg.url("slimy_bench")
        with psycopg.connect(pg.url("postgres"), autocommit=True) as admin:
            admin.execute("CREATE DATABASE slimy_bench")
        ENV["DATABASE_URL"] = url
        os.environ.update({k: ENV[k] for k in ("DATABASE_URL", "SECRET_KEY")})
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "slimy.settings")
        progress(f"PostgreSQL on port {pg.port}, log {pg.log_path}; migrating")
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=ENV, check=True
        )
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token

        owner = get_user_model().objects.create_user("bench", password="bench-password-123")
        token = Token.objects.create(user=owner).key
        with psycopg.connect(url, autocommit=True) as db:
            version = db.execute("SHOW server_version").fetchone()[0]
            bench = Bench(pg, db, owner, log_dir, args.profile, args.perf)
            if only == {"scaling"}:
                from bench.scaling import print_scaling, scaling

                backlogs = [int(n) for n in args.backlogs.split(",")]
                points = scaling(bench, token, backlogs, args.idle_seconds)
            elif only == {"busy"}:
                from bench.busy_api import busy_api, print_busy

                busy = busy_api(bench, token, args.busy_jobs)
            else:
                table = run(bench, args, only, token)
        if args.save_log:
            shutil.copy(pg.log_path, args.save_log)
    if only == {"scaling"}:
        print_header(version)
        print_scaling(points)
    elif only == {"busy"}:
        print_header(version)
        print_busy(busy, args.busy_jobs)
    else:
        print_tables(table, args, version)


def run(bench, args, only, token):
    table = Table()
    jobs, drains = args.jobs, table.drains
    drains["raw SQL"] = None  # the paired rounds fill it in, first row of the table
    stock_latency = None
    if "stock" in only:
        stock = table.scenario(
            "drain stock django-q2", bench.drain_cluster, "stock", args.stock_jobs, 20
        )
        drains["stock django-q2"], cluster = _split(stock)
        if cluster is not None:
            if "idle" in only:
                stock_latency = table.scenario("stock idle latency", bench.idle_latency, 20)
            cluster.stop()
            bench.drop_broker_rows()
    if args.peers:
        drains["Celery + Redis"] = table.scenario("drain Celery", bench.drain_celery, jobs, 20)
        drains["Procrastinate"] = table.scenario(
            "drain Procrastinate", bench.drain_procrastinate, jobs, 20
        )
    cluster = paired_drains(table, bench, jobs, args.rounds)
    try:
        if cluster is not None and "idle" in only:
            latency = table.scenario("idle latency", bench.idle_latency, 50)
            idle = table.scenario("idle statements", bench.idle_statements, args.idle_seconds)
            idle_targets(table, latency, stock_latency, idle)
        if cluster is not None and "big" in only:
            big = table.scenario("big conversation", bench.big_delete, cluster, args.big)
            big_targets(table, big, args.big)
    finally:
        if cluster is not None:
            cluster.stop()
    if "redis" in only:
        redis = table.scenario("drain ours on Redis", bench.drain_cluster, "redis", jobs, 20)
        drains["ours (Redis broker)"], on_redis = _split(redis)
        if on_redis is not None:
            on_redis.stop()
    drain_targets(table, jobs)
    if "http" in only:
        http = table.scenario(
            "HTTP latency", http_latency, bench, token, (10, args.large), (1, 16), {1: 100, 16: 8}
        )
        http_targets(table, http, args.large)
    return table


def paired_drains(table, bench, jobs, rounds):
    """Raw SQL then ours, `rounds` times in a row. Each figure is the median of its rounds and
    our ratio to raw SQL the median of the rounds' own ratios: this shared machine's speed
    drifts by a third within minutes, and a pair drained back to back meets the same minute.
    Returns our last round's cluster, still running (None if that round failed)."""
    raws, ours, cluster = [], [], None
    for number in range(1, rounds + 1):
        last = number == rounds
        name = f"round {number}/{rounds}"
        raws.append(table.scenario(f"drain raw SQL, {name}", bench.drain_raw, jobs, 20))
        outcome = table.scenario(f"drain ours, {name}", bench.drain_cluster, "orm", jobs, 20, last)
        result, cluster = _split(outcome)
        ours.append(result)
        if cluster is not None and not last:
            cluster.stop()
    table.rounds = [
        (raw, our)
        for raw, our in zip(raws, ours, strict=True)
        if not isinstance(raw, ScenarioError) and not isinstance(our, ScenarioError)
    ]
    table.drains["raw SQL"] = median_result(raws)
    table.drains["ours (database broker)"] = median_result(ours)
    if table.rounds and not isinstance(table.drains["ours (database broker)"], ScenarioError):
        ratios = [our["rate"] / raw["rate"] for raw, our in table.rounds]
        table.drains["ours (database broker)"]["x_raw"] = statistics.median(ratios)
    return cluster


def median_result(results):
    """Each figure's median over the rounds that finished; the first error if none did."""
    finished = [r for r in results if not isinstance(r, ScenarioError)]
    if not finished:
        return results[0]
    return {key: statistics.median(r[key] for r in finished) for key in finished[0]}


def x_raw(result, raw):
    """A drain's rate as a multiple of raw SQL's: its paired rounds' median ratio (ours), or
    the ratio of the two medians (a drain run once)."""
    return result.get("x_raw", result["rate"] / raw["rate"])


def _split(outcome):
    """(result, cluster) of a cluster drain, or (the error, None)."""
    return (outcome, None) if isinstance(outcome, ScenarioError) else outcome


def idle_targets(table, latency, stock_latency, idle):
    def stock():
        if stock_latency is None or isinstance(stock_latency, ScenarioError):
            return ""
        return f"stock {percentile(stock_latency, 50):.0f} / {percentile(stock_latency, 95):.0f}"

    row_of(
        table,
        "2. idle latency",
        lambda: (
            "2. idle latency enqueue -> gone, p50 / p95 (ms)",
            f"{percentile(latency, 50):.1f} / {percentile(latency, 95):.1f}",
            stock(),
            "",
            "p50 <= 25 ms",
            percentile(latency, 50) <= 25,
        ),
        latency,
    )
    row_of(
        table,
        "5. idle cluster",
        lambda: ("5. idle cluster, SQL statements/s", f"{idle:.2f}", "", "", "<= 1/s", idle <= 1),
        idle,
    )


def big_targets(table, big, messages):
    row_of(
        table,
        "4. big conversation",
        lambda: (
            f"4. one conversation of {messages:,} msgs: job time, best of 2 (s)",
            f"{big[0]:.2f}",
            f"raw SQL {big[1]:.2f}",
            f"{big[0] / big[1]:.2f} x raw",
            "<= 1.5 x raw",
            big[0] <= 1.5 * big[1],
        ),
        big,
    )
    row_of(
        table,
        "4. worker peak RSS growth",
        lambda: (
            "4. worker peak RSS growth (MB)",
            f"{big[2]:.1f}",
            "",
            "",
            "<= 20 MB",
            big[2] <= 20,
        ),
        big,
    )


def drain_targets(table, jobs):
    drains = table.drains
    ours, raw = drains["ours (database broker)"], drains["raw SQL"]
    celery = drains.get("Celery + Redis")

    def drain_row():
        ratio = f"{x_raw(ours, raw):.2f} x raw"
        met = ours["rate"] >= 500 and x_raw(ours, raw) >= 0.2
        reference = f"raw SQL {raw['rate']:.0f}"
        if celery is not None and not isinstance(celery, ScenarioError):
            ratio += f", {ours['rate'] / celery['rate']:.1f} x Celery"
            reference += f"; Celery {celery['rate']:.0f}"
            met = met and ours["rate"] >= 3 * celery["rate"]
        else:
            met = False  # the Celery part of the target is not measured without --peers
        return (
            f"1. drain {jobs} jobs x 20 msgs, {WORKERS} workers (jobs/s)",
            f"{ours['rate']:.0f}",
            reference,
            ratio,
            ">= 500, >= 0.2 x raw, >= 3 x Celery",
            met,
        )

    row_of(table, "1. drain", drain_row, ours, raw)
    row_of(
        table,
        "1. CPU per job",
        lambda: (
            "1. CPU per job, cluster + PostgreSQL (ms)",
            f"{ours['cpu_workers'] + ours['cpu_server']:.1f}",
            f"raw SQL {raw['cpu_workers'] + raw['cpu_server']:.1f}",
            "",
            "<= 4 ms",
            ours["cpu_workers"] + ours["cpu_server"] <= 4,
        ),
        ours,
        raw,
    )
    row_of(
        table,
        "1. statements per job",
        lambda: (
            "1. SQL statements per job, worker side",
            f"{ours['statements']:.1f}",
            f"raw SQL {raw['statements']:.1f}",
            "",
            "<= 6",
            ours["statements"] <= 6,
        ),
        ours,
        raw,
    )


def http_targets(table, http, large):
    for clients in (1, 16):
        for size in (10, large):

            def delete_row(size=size, clients=clients):
                get, delete = http[(size, clients, "GET")], http[(size, clients, "DELETE")]
                return (
                    f"3. DELETE, {size:,} msgs, {clients} client(s): p50 / p99 ms, req/s",
                    f"{delete['p50']:.1f} / {delete['p99']:.1f}, {delete['rps']:.0f}",
                    f"GET {get['p50']:.1f} / {get['p99']:.1f}, {get['rps']:.0f}",
                    f"{delete['p50'] / get['p50']:.2f} x GET",
                    "p50 <= 1.3 x GET",
                    delete["p50"] <= 1.3 * get["p50"],
                )

            row_of(table, f"3. DELETE, {size:,} msgs, {clients} client(s)", delete_row, http)

        def flat_row(clients=clients):
            small, big = http[(10, clients, "DELETE")], http[(large, clients, "DELETE")]
            spread = big["p50"] / small["p50"] - 1
            return (
                f"3. DELETE p50, {large:,} vs 10 msgs, {clients} client(s)",
                f"{big['p50']:.1f} vs {small['p50']:.1f} ms",
                "",
                f"{spread:+.0%}",
                "within 15%",
                abs(spread) <= 0.15,
            )

        row_of(table, f"3. DELETE p50, {large:,} vs 10 msgs, {clients} client(s)", flat_row, http)


def print_header(version):
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"PostgreSQL {version} (throwaway, statements logged), python {sys.version.split()[0]}, "
        f"bench/run.py {' '.join(sys.argv[1:])}"
    )
    print()


def print_tables(table, args, version):
    print_header(version)
    headers = (
        "drain, concurrency 10",
        "jobs/s",
        "x raw SQL",
        "CPU ms/job: workers + PostgreSQL",
        "statements/job (worker side)",
    )
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    raw = table.drains.get("raw SQL")
    for name, result in table.drains.items():
        if isinstance(result, ScenarioError):
            print(f"| {name} | ERROR: {result.message} | | | |")
            continue
        ratio = "" if isinstance(raw, ScenarioError) else f"{x_raw(result, raw):.2f}"
        cpu = result["cpu_workers"] + result["cpu_server"]
        print(
            f"| {name} | {result['rate']:.0f} | {ratio} | {cpu:.1f}: "
            f"{result['cpu_workers']:.1f} + {result['cpu_server']:.1f} | "
            f"{result['statements']:.1f} |"
        )
    if table.rounds:
        rounds = ", ".join(
            f"{raw['rate']:.0f} / {our['rate']:.0f} ({our['rate'] / raw['rate']:.2f})"
            for raw, our in table.rounds
        )
        print()
        print(f"Paired rounds, raw SQL / ours in jobs/s (ratio): {rounds}; the medians above.")
    print()
    headers = ("scenario", "ours", "reference (same run)", "ratio", "target", "met")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for line in sorted(table.targets, key=lambda r: r[0][0]):  # by scenario number, stable
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
