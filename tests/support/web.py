"""Real gunicorn processes for tests, on a free loopback port, pointed at the test database."""

import os
import subprocess
import sys

import requests

from tests.support.cluster import ROOT, test_database_url, wait_for
from tests.support.pg_server import free_port


class WebServer:
    def __init__(self, tmp_path, index, *, workers=2, threads=4, extra_env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"gunicorn-{index}.log"
        env = {
            **os.environ,
            "DATABASE_URL": test_database_url(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            **(extra_env or {}),
        }
        with self.log_path.open("w") as log:  # the process keeps its own copy open
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "slimy.wsgi",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--workers",
                    str(workers),
                    "--threads",
                    str(threads),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def up():
            try:
                return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # booting, or slow to answer
                return self.process.poll() is not None

        wait_for(up, 30, interval=0.2, message="gunicorn")
        assert self.process.poll() is None, self.log_path.read_text()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


class WebServerFactory:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.servers = []

    def start(self, **options):
        server = WebServer(self.tmp_path, len(self.servers), **options)
        self.servers.append(server)
        return server

    def stop_all(self):
        for server in self.servers:
            server.stop()
