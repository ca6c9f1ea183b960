"""CPU time and SQL statements per job with tracing off and on, side by side in one run.

    .venv/bin/python bench/tracing_cost.py [--jobs 400] [--rounds 3] [--baseline DIR]

Runs `delete_conversation` jobs (20 messages each) through the worker's entry point
(queues.execution.runner.run_job), as a qcluster worker does minus the broker's claim, in a fresh
child process per mode and round, alternating: tracing off (no OTEL_* variables) and on (OTLP over
HTTP to bench/otlp_sink.py, started here). `--baseline DIR` adds the same jobs run by another
checkout, e.g. `git archive main | tar -x -C DIR` before tracing existed, on its own database
(`<name>_baseline`): "off" beside it shows what the tracing code costs when off. CPU is the child's
process time over its jobs, every thread included (the span exporter's too: the child flushes
before it stops the clock). Enqueueing happens before the clock starts. Uses
BENCH_DATABASE_URL (default .../slimy_bench), created if missing and migrated; the rows it adds
are deleted by its own jobs. Prints a table of medians.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parents[1]
SINK_PORT = 43189
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
    "DATABASE_URL": os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/slimy_bench"
    ),
    "SECRET_KEY": os.environ.get("SECRET_KEY") or "slimy-bench-secret-key-" + "0123456789" * 4,
    "DJANGO_SETTINGS_MODULE": "slimy.settings",
    "LOG_LEVEL": "WARNING",
}
TRACING_ON = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{SINK_PORT}",
    "OTEL_SERVICE_NAME": "slimy-bench",
}


def child(jobs):
    """Run `jobs` deletions in this process; print CPU ms and SQL statements per job as JSON."""
    sys.path.insert(0, os.getcwd())
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from opentelemetry import trace

    from chat.models import Conversation, Message
    from chat.services import request_conversation_deletion
    from queues.execution.runner import run_job

    owner, _ = get_user_model().objects.get_or_create(username="tracing-cost")
    conversations = Conversation.objects.bulk_create(
        Conversation(owner=owner, title="bench") for _ in range(jobs)
    )
    Message.objects.bulk_create(
        Message(conversation=c, role="user", content="message")
        for c in conversations
        for _ in range(20)
    )
    job_ids = [request_conversation_deletion(c, request_id="bench").pk for c in conversations]

    statements = 0

    def count(execute, sql, params, many, context):
        nonlocal statements
        statements += 1
        return execute(sql, params, many, context)

    flush = getattr(trace.get_tracer_provider(), "force_flush", lambda: True)
    flush()
    started, wall = time.process_time(), time.perf_counter()
    with connection.execute_wrapper(count):
        for job_id in job_ids:
            run_job(job_id)
        flush()
    cpu, wall = time.process_time() - started, time.perf_counter() - wall
    print(
        json.dumps(
            {"cpu_ms": cpu * 1e3 / jobs, "wall_ms": wall * 1e3 / jobs, "sql": statements / jobs}
        )
    )


def prepare(root, database_url):
    """Create the database if missing; migrate it with `root`'s migrations."""
    url = urlsplit(database_url)
    with psycopg.connect(urlunsplit(url._replace(path="/postgres")), autocommit=True) as admin:
        name = url.path.lstrip("/")
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')
    env = {**ENV, "DATABASE_URL": database_url}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=root, env=env, check=True)


def run_child(jobs, root, database_url, extra_env):
    out = subprocess.run(
        [sys.executable, Path(__file__).resolve(), "--child", "--jobs", str(jobs)],
        cwd=root,
        env={**ENV, "DATABASE_URL": database_url, **extra_env},
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"a child run in {root} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout without tracing, to compare")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.jobs)

    database = ENV["DATABASE_URL"]
    modes = {"off": (ROOT, database, {}), "on (OTLP/HTTP)": (ROOT, database, TRACING_ON)}
    if args.baseline:
        modes = {"baseline (no tracing code)": (args.baseline, database + "_baseline", {}), **modes}
    for root, database_url, _ in modes.values():
        prepare(root, database_url)
    sink = subprocess.Popen(
        [sys.executable, "bench/otlp_sink.py", str(SINK_PORT)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    results = {mode: [] for mode in modes}
    try:
        time.sleep(0.5)
        for _ in range(args.rounds):
            for mode, setup in modes.items():
                results[mode].append(run_child(args.jobs, *setup))
    finally:
        sink.terminate()
        received = sink.communicate(timeout=10)[0].strip()

    print(f"{args.rounds} rounds x {args.jobs} jobs, medians; {received}")
    print("| tracing | CPU ms/job | wall ms/job | SQL statements/job | CPU ms/job, each round |")
    print("|---|---|---|---|---|")
    for mode, rows in results.items():
        cpu, wall, sql = (
            statistics.median(r[key] for r in rows) for key in ("cpu_ms", "wall_ms", "sql")
        )
        each = ", ".join(f"{r['cpu_ms']:.2f}" for r in rows)
        print(f"| {mode} | {cpu:.2f} | {wall:.2f} | {sql:.1f} | {each} |")


if __name__ == "__main__":
    main()
