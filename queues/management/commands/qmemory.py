"""`manage.py qmemory`: memory of this host's cluster processes (replaces django-q2's)."""

import os
from typing import Any

from django.core.management.base import CommandError, CommandParser

from queues.management import inspection


class Command(inspection.WatchCommand):
    help = (
        "Resident memory (MB) of each live cluster's processes on this host: sentinel, pusher, "
        "monitor and workers (each with --workers). Read from /proc (Linux)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--workers", action="store_true", help="a line per worker too")

    def handle(self, *args: Any, run_once: bool, interval: float, workers: bool, **options):
        if inspection.rss_mb(os.getpid()) is None:
            raise CommandError("qmemory reads /proc, which this system does not have")
        self.each_worker = workers
        self.watch(self.snapshot, once=run_once, interval=interval)

    def snapshot(self) -> list[str]:
        host = inspection.this_host()
        rows, elsewhere = [], []
        for cluster in inspection.clusters():
            if cluster["host"] != host:
                elsewhere.append(f"{cluster['queue']} on {cluster['host']} (pid {cluster['pid']})")
                continue
            processes = [
                ("sentinel", cluster["sentinel"]),
                ("pusher", cluster["pusher"]),
                ("monitor", cluster["monitor"]),
            ] + [(f"worker {n}", pid) for n, pid in enumerate(cluster["workers"], 1)]
            sizes = {role: inspection.rss_mb(pid) for role, pid in processes if pid}
            worker_sizes = [mb for role, mb in sizes.items() if role.startswith("worker") and mb]
            rows.append(
                {
                    "queue": cluster["queue"],
                    "pid": cluster["pid"],
                    "process": "cluster",
                    "rss": round(sum(mb for mb in sizes.values() if mb), 1),
                    "workers": len(cluster["workers"]),
                    "worker_max": max(worker_sizes, default=None),
                }
            )
            if self.each_worker:
                rows += [
                    {
                        "queue": "",
                        "pid": pid,
                        "process": role,
                        "rss": sizes.get(role),
                        "workers": None,
                        "worker_max": None,
                    }
                    for role, pid in processes
                    if pid
                ]
        columns = [
            ("queue", "queue"),
            ("pid", "pid"),
            ("process", "process"),
            ("rss", "MB"),
            ("workers", "workers"),
            ("worker_max", "largest worker MB"),
        ]
        lines = [f"Cluster processes on {host}"]
        lines += inspection.table(rows, columns) if rows else ["  none live on this host"]
        if elsewhere:
            lines += ["", "On other hosts (run qmemory there):", *elsewhere]
        return [*lines, ""]
