"""`manage.py qmonitor`: `qinfo`'s view, refreshed until Ctrl-C (replaces django-q2's)."""

from typing import Any

from queues.management import inspection


class Command(inspection.WatchCommand):
    help = (
        "The live clusters and each queue's backlog and throughput, refreshed every --interval "
        "seconds until Ctrl-C (qinfo prints it once)."
    )

    def handle(self, *args: Any, run_once: bool, interval: float, **options: Any) -> None:
        self.watch(inspection.overview, once=run_once, interval=interval)
