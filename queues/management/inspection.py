"""What `qinfo`, `qmonitor` and `qmemory` show: live clusters, their workers, the queues.

django-q2's own commands read its cache-kept stats and its `Success`/`Failure` tables, which our
clusters do not write (job records are ours), and need `blessed` and `psutil`. Ours read the
clusters' heartbeats (`queues.django_q2.heartbeats`, on the database whatever the broker) and
the job counters, so they show every cluster on any host, in plain text or JSON.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone
from django_q.signing import BadSignature, SignedPackage

from queues.conf import conf
from queues.core import selectors
from queues.django_q2.heartbeats import live_clusters


def clusters() -> list[dict[str, Any]]:
    """Every cluster seen in the last 30 s, by queue then host and pid."""
    now = timezone.now()
    found = []
    for beat in live_clusters().order_by("queue", "host", "pid"):
        try:
            stat = SignedPackage.loads(beat.payload)
        except BadSignature:  # another SECRET_KEY's cluster: its row says what it can
            stat = None
        found.append(
            {
                "queue": beat.queue,
                "host": beat.host,
                "pid": beat.pid,
                "status": beat.status,
                "seen_seconds_ago": round((now - beat.seen_at).total_seconds(), 1),
                "cluster_id": str(getattr(stat, "cluster_id", "")),
                "uptime_seconds": round(stat.uptime()) if stat and stat.tob else None,
                "workers": list(getattr(stat, "workers", [])),
                "reincarnations": getattr(stat, "reincarnations", 0),
                "sentinel": getattr(stat, "sentinel", 0),
                "pusher": getattr(stat, "pusher", 0),
                "monitor": getattr(stat, "monitor", 0),
            }
        )
    return found


def queues() -> list[dict[str, Any]]:
    """Each queue of `QUEUES`: its options, clusters, backlog and recent throughput."""
    stats = selectors.queue_stats(conf.QUEUES)
    return [
        {
            "queue": name,
            "workers_per_cluster": options["workers"],
            "timeout": options["timeout"],
            "live_clusters": stats[name]["live_clusters"],
            "paused": stats[name]["paused"],
            "waiting": stats[name]["waiting"],
            "running": stats[name]["running"],
            "oldest_waiting_seconds": stats[name]["oldest_waiting_seconds"],
            "succeeded": stats[name]["succeeded"],
            "failed": stats[name]["failed"],
            "per_minute_5m": stats[name]["throughput_per_minute"]["5m"],
        }
        for name, options in conf.QUEUES.items()
    ]


def rss_mb(pid: int) -> float | None:
    """Resident memory of process `pid` on this host in MB, or None (gone, or no /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> list[str]:
    """`rows` as aligned text: (key, heading) columns, a dash for None."""
    cells = [[("-" if row[key] is None else str(row[key])) for key, _ in columns] for row in rows]
    widths = [
        max([len(heading)] + [len(line[i]) for line in cells])
        for i, (_, heading) in enumerate(columns)
    ]
    lines = ["  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    return lines


class WatchCommand(BaseCommand):
    """A command that prints a snapshot once (`--run-once`) or every `--interval` seconds."""

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--run-once", action="store_true", help="print once and exit")
        parser.add_argument(
            "--interval", type=float, default=2.0, help="seconds between refreshes (2)"
        )

    def watch(self, snapshot: Callable[[], list[str]], *, once: bool, interval: float) -> None:
        clear = self.stdout.isatty() and not once
        try:
            while True:
                lines = snapshot()
                if clear:
                    self.stdout.write("\x1b[H\x1b[2J", ending="")
                self.stdout.write("\n".join(lines))
                if once:
                    return
                self.stdout.write(f"(every {interval:g} s; Ctrl-C to stop)\n")
                self.stdout.flush()
                time.sleep(interval)
        except KeyboardInterrupt:
            return


def this_host() -> str:
    """This host's name as a cluster reports its own (django-q2's `Stat.host`)."""
    return socket.gethostname()


CLUSTER_COLUMNS = [
    ("queue", "queue"),
    ("host", "host"),
    ("pid", "pid"),
    ("status", "status"),
    ("worker_count", "workers"),
    ("uptime", "up"),
    ("reincarnations", "restarted workers"),
    ("seen_seconds_ago", "seen (s ago)"),
]
QUEUE_COLUMNS = [
    ("queue", "queue"),
    ("live_clusters", "clusters"),
    ("workers_per_cluster", "workers each"),
    ("timeout", "timeout"),
    ("state", "state"),
    ("waiting", "waiting"),
    ("running", "running"),
    ("oldest_waiting_seconds", "oldest due (s)"),
    ("per_minute_5m", "done/min (5m)"),
    ("succeeded", "succeeded"),
    ("failed", "failed"),
]


def overview() -> list[str]:
    """`qinfo`'s and `qmonitor`'s text: the live clusters, then the queues."""
    found = clusters()
    for cluster in found:
        cluster["worker_count"] = len(cluster["workers"])
        cluster["uptime"] = _duration(cluster["uptime_seconds"])
    listed = queues()
    for queue in listed:
        queue["state"] = (
            "paused"
            if queue["paused"]
            else "no cluster"
            if not queue["live_clusters"]
            else "running"
        )
    stamp = f"{timezone.now():%Y-%m-%d %H:%M:%S} UTC"
    lines = [f"Clusters seen in the last 30 s ({len(found)}), {stamp}"]
    lines += (
        table(found, CLUSTER_COLUMNS) if found else ["  none: start one with manage.py qcluster"]
    )
    lines += ["", "Queues", *table(listed, QUEUE_COLUMNS)]
    return [*lines, ""]


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
