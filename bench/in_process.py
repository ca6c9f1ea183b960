"""CPU per job of the runner alone, in one process, and what one more round trip would cost.

    .venv/bin/python bench/in_process.py                    # 6 rounds of 1,000 jobs, 1 minute
    .venv/bin/python bench/in_process.py --statements       # also pg_stat_statements, per job

Each round makes 1,000 conversations of 20 messages, asks for their deletion as the API does, then
runs every job through `queues.execution.runner.run_job` in this process (as a worker runs it,
without the pusher and the worker loop), reading the CPU of this process and of its server backend
from /proc. Without the cluster's 22 processes on 2 cores, this is steadier than a drain: a
comparison of two versions of the runner reads a few percent here that a drain's noise hides.

Rounds alternate between the runner as it is and the runner plus one `SELECT` round trip per job
(through `queues.engine.statements.hot_cursor`, as the runner's own statements go), so the table
also says what a round trip costs each side, measured in the same minutes. The first round of each
warms up and is not counted. A throwaway PostgreSQL (`bench/pg_server.py`, durable, statements
not logged) with `pg_stat_statements` loaded; the machine's server is never touched. The
runner's log lines go to a file in BENCH_LOG_DIR (`/tmp`), as a worker's do.
"""

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    ENV,
    make_conversations,
    process_stat,
    progress,
    request_deletions,
)
from tests.support.pg_server import PostgresServer  # noqa: E402

STATEMENTS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.track_planning": "on",
}


def run_round(db, owner_id, jobs, extra_round_trip, statements=None):
    """(client, backend) microseconds of CPU per job for one round of `jobs` jobs; adds the
    round's jobs' statements to `statements` ({query: [calls, exec ms, plan ms, plans]})."""
    from django.db import connection

    from queues.engine.statements import hot_cursor
    from queues.execution.runner import run_job
    from queues.models import Job

    ids = make_conversations(db, owner_id, jobs, 20)
    request_deletions(ids)
    todo = list(Job.objects.filter(status=Job.Status.QUEUED).values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    db.execute("SELECT pg_stat_statements_reset()")
    client0, backend0 = process_stat("self")[1], process_stat(backend)[1]
    for job_id in todo:
        if extra_round_trip:
            with hot_cursor() as cursor:
                cursor.execute("SELECT %s::int", [1])
                cursor.fetchone()
        run_job(job_id)
    client = process_stat("self")[1] - client0
    server = process_stat(backend)[1] - backend0
    if statements is not None:
        for query, *numbers in db.execute(
            "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls, total_exec_time,"
            " total_plan_time, plans FROM pg_stat_statements"
            " WHERE query NOT LIKE '%%pg_stat_statements%%'"
        ):
            totals = statements.setdefault(query, [0, 0.0, 0.0, 0])
            totals[:] = [a + b for a, b in zip(totals, numbers, strict=True)]
    return client / len(todo) * 1e6, server / len(todo) * 1e6


def print_statements(statements, jobs):
    """The heaviest statements of the counted rounds' jobs, per job: execution, planning."""
    print(f"\nThe jobs' statements (pg_stat_statements over {jobs} jobs), per job:\n")
    print("| calls | exec us | plan us | plans | statement |")
    print("|---|---|---|---|---|")
    heaviest = sorted(statements.items(), key=lambda item: -(item[1][1] + item[1][2]))
    for query, (calls, exec_ms, plan_ms, plans) in heaviest[:10]:
        per_job = 1000 / jobs
        print(
            f"| {calls} | {exec_ms * per_job:.1f} | {plan_ms * per_job:.1f} | {plans} |"
            f" `{query[:90]}` |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="counted rounds (half with the trip)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per round")
    parser.add_argument("--statements", action="store_true", help="print pg_stat_statements")
    args = parser.parse_args()
    log_dir = Path(os.environ.get("BENCH_LOG_DIR", "/tmp"))

    progress("starting a throwaway PostgreSQL server")
    with PostgresServer(durable=True, settings=STATEMENTS) as pg:
        pg.create_database("slimy_bench")
        url = pg.url("slimy_bench")
        os.environ.update(
            {"DATABASE_URL": url, "SECRET_KEY": ENV["SECRET_KEY"], "ALLOWED_HOSTS": "127.0.0.1"}
        )
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "slimy.settings")
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        log = (log_dir / "bench-in-process.log").open("w")
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(log)
        owner = get_user_model().objects.create_user("bench", password="bench-password-123")
        results = {False: [], True: []}
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            for warm_up in (False, True):
                run_round(db, owner.pk, args.jobs, warm_up)
            started, statements = time.monotonic(), {}
            for number in range(args.rounds):
                extra = number % 2 == 1
                results[extra].append(run_round(db, owner.pk, args.jobs, extra, statements))
                client, server = results[extra][-1]
                trip = "with one more round trip" if extra else "as it is"
                progress(f"round {number + 1}: {client:.0f} + {server:.0f} us/job ({trip})")
        print_table(results, args, started)
        if args.statements:
            print_statements(statements, args.rounds * args.jobs)


def print_table(results, args, started):
    """Medians of the rounds of each kind, and the round trip as the difference of the medians."""
    medians = {
        extra: [statistics.median(r[side] for r in rounds) for side in (0, 1)]
        for extra, rounds in results.items()
    }
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs,"
        f" {args.rounds} rounds of {args.jobs} jobs in {time.monotonic() - started:.0f} s,"
        f" bench/in_process.py {' '.join(sys.argv[1:])}\n"
    )
    print("| runner, one process | client us/job | server backend us/job | total us/job |")
    print("|---|---|---|---|")
    for extra, label in ((False, "as it is"), (True, "plus one round trip per job")):
        client, server = medians[extra]
        print(f"| {label} | {client:.0f} | {server:.0f} | {client + server:.0f} |")
    (client, server), (client2, server2) = medians[False], medians[True]
    delta = client2 - client, server2 - server
    print(f"| one round trip | {delta[0]:.0f} | {delta[1]:.0f} | {sum(delta):.0f} |")


if __name__ == "__main__":
    main()
