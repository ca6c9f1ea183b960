"""A throwaway PostgreSQL server for the benchmark: its own data directory, port and statement log.

The bench never reconfigures the machine's shared server: it starts this one (initdb in a temp
dir, a free port, as the `postgres` OS user when run as root), so it can log every statement
(`log_statement=all`, each line prefixed with the client's `application_name` and backend pid)
and so the CPU of its backends is the bench's alone (`postmaster_pid`, a process tree).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

# One log line per statement, "<application_name>|<pid>|<time>|LOG:  statement: ..." (simple
# protocol) or "...LOG:  execute <name>: ..." (extended protocol: psycopg with parameters).
_STATEMENT = re.compile(rb"^([^|\n]*)\|\d+\|[^|\n]*\|LOG:  (?:statement|execute [^:]*):", re.M)


def binaries():
    """The newest installed server's bin directory (Debian layout), or PG_BIN."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not versions:
        raise RuntimeError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (PG_BIN)")
    return versions[-1]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ThrowawayPostgres:
    """`with ThrowawayPostgres() as pg:` a running server at `pg.url(dbname)`, removed at exit."""

    def __init__(self, settings=None):
        self.bin = binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="slimy-bench-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.port = free_port()
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.dir),
            "max_connections": "200",
            "log_statement": "all",
            "log_line_prefix": "%a|%p|%m|",
            "log_min_messages": "warning",
            **(settings or {}),
        }
        self.process = None

    def _as_postgres(self):
        """Run server binaries as `postgres` when we are root (initdb refuses root)."""
        if os.geteuid() != 0:
            return {}
        shutil.chown(self.dir, "postgres", "postgres")
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def start(self):
        account = self._as_postgres()
        subprocess.run(
            [self.bin / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            **account,
        )
        options = [arg for k, v in self.settings.items() for arg in ("-c", f"{k}={v}")]
        self.log = self.log_path.open("wb")
        if account:
            shutil.chown(self.log_path, "postgres", "postgres")
        self.process = subprocess.Popen(
            [self.bin / "postgres", "-D", self.data, *options],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **account,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    error = f"throwaway PostgreSQL did not start: {self.tail()}"
                    raise RuntimeError(error) from None
                time.sleep(0.1)

    def url(self, dbname):
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def postmaster_pid(self):
        return self.process.pid

    def log_offset(self):
        self.log.flush()
        return self.log_path.stat().st_size

    def statements(self, start, end, application_name):
        """Statements logged between two log offsets by clients of `application_name`."""
        with self.log_path.open("rb") as log:
            log.seek(start)
            chunk = log.read(end - start)
        name = application_name.encode()
        return sum(1 for m in _STATEMENT.finditer(chunk) if m.group(1) == name)

    def tail(self, lines=20):
        if not self.log_path.exists():
            return ""
        return b"\n".join(self.log_path.read_bytes().splitlines()[-lines:]).decode(errors="replace")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: SIGTERM waits for clients
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
