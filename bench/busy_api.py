"""The API while the workers drain a flood of deletions, web and workers on one box.

    .venv/bin/python bench/run.py --only busy [--busy-jobs 20000]

gunicorn (4 sync workers) answers one client that alternates `GET` of a 10-message conversation
and `DELETE` of another, first with no cluster running (idle), then during a drain of
`--busy-jobs` deletions (20 messages each) in each of these arrangements:

- shared: the qcluster at its defaults, on the same cores as gunicorn;
- nice: the same with `QUEUE_WORKER_NICE=19`, the operators' knob;
- pinned: the qcluster on CPU 1 and gunicorn on CPU 0 (`taskset`), so what remains over idle is
  the database's side (its backends, locks, I/O), not the web's share of the CPU.

Each row: p50 and p99 of each method over the drain, their ratio to idle, and the drain's rate.
"""

import os
import subprocess
import time

from bench.run import make_conversations, percentile, progress, qcluster, remaining
from bench.scaling import Web

CHUNK = 1000
ARRANGEMENTS = ("shared", "nice", "pinned")


def enqueue_drain(db, owner_id, count):
    """`count` conversations of 20 messages, marked and their deletions enqueued in bulk."""
    from queues.api import enqueue_many

    ids = make_conversations(db, owner_id, count, 20)
    db.execute(
        "UPDATE chat_conversation SET deletion_requested_at = now() WHERE id BETWEEN %s AND %s",
        [ids[0], ids[-1]],
    )
    for start in range(0, count, CHUNK):
        items = [{"conversation_id": c, "user_id": owner_id} for c in ids[start : start + CHUNK]]
        enqueue_many("delete_conversation", items)
    return ids


def drop_waiting(db):
    """What a measured drain left: its waiting jobs withdrawn and their broker rows gone, so the
    next arrangement drains only its own."""
    with db.transaction():
        db.execute("DELETE FROM django_q_ormq")
        db.execute(
            "UPDATE queues_job SET status = 'cancelled', finished_at = now()"
            " WHERE status IN ('queued', 'retrying', 'running')"
        )


def requests_while(web, gets, deletes, busy):
    """Alternate GET and DELETE while `busy()` holds (or until the targets run out)."""
    timings = {"GET": [], "DELETE": []}
    for number, (get, delete) in enumerate(zip(gets, deletes, strict=True)):
        if number % 10 == 0 and not busy():
            break
        timings["GET"].append(web.timed(web.api, "GET", f"/api/chat/conversations/{get}"))
        timings["DELETE"].append(web.timed(web.api, "DELETE", f"/api/chat/conversations/{delete}"))
    return timings


def figures(timings):
    return {
        method: (percentile(values, 50), percentile(values, 99), len(values))
        for method, values in timings.items()
    }


def pin(pid, cpu):
    """Pin the process `pid` and all its threads and children to `cpu`."""
    subprocess.run(
        ["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True
    )


def process_tree(root):
    out = subprocess.run(["ps", "-o", "pid=,ppid=", "-e"], capture_output=True, text=True).stdout
    children = {}
    for line in out.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def busy_api(bench, token, jobs, requests_per_phase=400):
    from bench.scaling import staff_session

    web = Web(token, staff_session())
    results = {}
    try:
        targets = make_conversations(bench.db, bench.owner.pk, 2 * requests_per_phase, 10)
        gets, deletes = targets[:requests_per_phase], targets[requests_per_phase:]
        for c in gets[:8]:
            web.timed(web.api, "GET", f"/api/chat/conversations/{c}")
        progress("busy API: idle")
        results["idle"] = figures(requests_while(web, gets, deletes, lambda: True))
        for arrangement in ARRANGEMENTS:
            progress(f"busy API: {arrangement}, enqueueing {jobs:,} deletions")
            targets = make_conversations(bench.db, bench.owner.pk, 2 * requests_per_phase, 10)
            gets, deletes = targets[:requests_per_phase], targets[requests_per_phase:]
            ids = enqueue_drain(bench.db, bench.owner.pk, jobs)
            env = {"QUEUE_WORKER_NICE": "19"} if arrangement == "nice" else {}
            cluster = qcluster("orm", bench.log_dir, env)
            try:
                if arrangement == "pinned":
                    time.sleep(2)  # its processes forked
                    for pid in process_tree(cluster.process.pid):
                        pin(pid, 1)
                    for pid in process_tree(web.server.pid):
                        pin(pid, 0)
                while remaining(bench.db, ids) == jobs:
                    cluster.check()
                    time.sleep(0.05)
                started, left = time.perf_counter(), remaining(bench.db, ids)
                timings = requests_while(
                    web, gets, deletes, lambda ids=ids: remaining(bench.db, ids) > jobs // 10
                )
                gone = left - remaining(bench.db, ids)
                rate = gone / (time.perf_counter() - started)
            finally:
                cluster.stop()
                drop_waiting(bench.db)
                if arrangement == "pinned":
                    for pid in process_tree(web.server.pid):
                        pin(pid, f"0-{os.cpu_count() - 1}")
            results[arrangement] = {**figures(timings), "rate": rate}
    finally:
        web.stop()
    return results


def print_busy(results, jobs):
    idle = results["idle"]
    print(
        f"| API, 1 client, during a drain of {jobs:,} deletions | GET p50 / p99 ms | "
        "DELETE p50 / p99 ms | p99 x idle (GET, DELETE) | drain jobs/s |"
    )
    print("|---|---|---|---|---|")
    for name, row in results.items():
        ratio = ""
        if name != "idle":
            ratio = (
                f"{row['GET'][1] / idle['GET'][1]:.2f}, {row['DELETE'][1] / idle['DELETE'][1]:.2f}"
            )
        rate = f"{row['rate']:.0f}" if "rate" in row else ""
        print(
            f"| {name} ({row['GET'][2]} + {row['DELETE'][2]} requests) | "
            f"{row['GET'][0]:.1f} / {row['GET'][1]:.1f} | "
            f"{row['DELETE'][0]:.1f} / {row['DELETE'][1]:.1f} | {ratio} | {rate} |"
        )
