"""`manage.py qcluster --reload`: a cluster that restarts when the project's Python code changes.

For development only, as `runserver`'s reloader is (`scripts/run` uses it): a running worker
keeps the code it imported, so without a restart an edited job handler or task would still run
its old version. This process runs no jobs itself: it starts `manage.py qcluster` as a child,
watches the `.py` files of the project's packages with Django's own reloader, and on a change
stops the child as SIGTERM does (running jobs finish) and starts a new one. SIGTERM or Ctrl-C
stops the child and then this process.
"""

import logging
import signal
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.utils import autoreload

log = logging.getLogger(__name__)


def project_packages() -> list[Path]:
    """The top-level Python packages of the project (apps, settings, tests), not its virtualenv."""
    base = Path(settings.BASE_DIR)
    return sorted(p for p in base.iterdir() if (p / "__init__.py").is_file())


class ReloadingCluster:
    def __init__(self, argv: list[str]):
        self.argv = argv  # manage.py and qcluster's own arguments, without --reload
        self.child = None

    def run(self) -> None:
        reloader = autoreload.get_reloader()
        for package in project_packages():
            reloader.watch_dir(package, "**/*.py")
        autoreload.file_changed.connect(self.restart)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.start()
        reloader.run_loop()

    def start(self) -> None:
        self.child = subprocess.Popen([sys.executable, *self.argv])

    def restart(self, sender, file_path, **kwargs) -> bool:
        log.info("%s changed: restarting the worker cluster", file_path)
        self.stop_child()
        self.start()
        return True  # handled: the reloader goes on watching instead of exiting

    def stop_child(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()
            self.child.wait()

    def stop(self, signum, frame) -> None:
        self.stop_child()
        sys.exit(0)
