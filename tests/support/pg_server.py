"""A throwaway PostgreSQL server: initdb into a temporary directory, a free port, ours to break.

Faults such as a server restart are tried here, never on a server the tests did not start:

    with PostgresServer() as server:
        psycopg.connect(server.url("postgres"))
        server.restart()

As root (CI, containers) the server runs as the `postgres` OS user, which PostgreSQL requires;
otherwise as the current user. Binaries come from `PG_BIN`, else /usr/lib/postgresql/<newest
version>/bin (Debian and Ubuntu), else from PATH. Trust authentication on 127.0.0.1 only, and no
fsync unless asked to be `durable`: it holds test data. No Django here, so the benchmark
(bench/pg_server.py) and the chaos harness (bench/chaos.py) start theirs with it too.
"""

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

OS_USER = "postgres"
# Test data need not survive a crash of the machine: without flushes a commit costs next to nothing.
NOT_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bin_dir():
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    versions = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if versions:
        newest = max(versions, key=lambda path: int(Path(path).parts[-3]))
        return Path(newest).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    return Path(initdb).resolve().parent


class PostgresServer:
    """`settings` are server settings (`{"max_connections": "200"}`); `durable` keeps fsync on,
    as on a production server, for a measurement whose commits must cost what they cost there."""

    def __init__(self, port=None, *, durable=False, settings=None):
        self.port = port or free_port()
        self.bin = bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="slimy-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            user = pwd.getpwnam(OS_USER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self._run(
            "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"
        )
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.dir),
            **({} if durable else NOT_DURABLE),
            **(settings or {}),
        }
        self.running = False

    def url(self, dbname="postgres"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self):
        self._pg_ctl("start", *self._server_options())
        self.running = True
        return self

    def stop(self):
        if self.running:
            self._pg_ctl("stop", "-m", "fast")
            self.running = False

    def restart(self):
        """A fast restart: every session is cut off, the server is back when this returns."""
        self._pg_ctl("restart", "-m", "fast", *self._server_options())
        self.running = True

    @property
    def postmaster_pid(self):
        """The server's main process, of which every backend is a child (while it runs)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def create_database(self, name):
        self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-q",
            "-c",
            f'CREATE DATABASE "{name}"',
        )
        return self.url(name)

    def destroy(self):
        """Stop the server and delete its files."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.destroy()

    def _server_options(self):
        # The log file too: a server writing to pg_ctl's inherited stdout would keep it open.
        # pg_ctl hands the options to a shell, hence the quoting (`log_line_prefix` may hold `|`).
        options = " ".join(
            f"-c {shlex.quote(f'{name}={value}')}" for name, value in self.settings.items()
        )
        return ["-l", self.log, "-o", options]

    def _pg_ctl(self, *args):
        self._run("pg_ctl", "-D", self.data, "-w", "-t", "60", *args)

    def _run(self, program, *args):
        command = [str(self.bin / program), *map(str, args)]
        if self.as_root:
            command = ["runuser", "-u", OS_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}{log}")
