"""A real PgBouncer in transaction mode for tests, on a free loopback port, in front of the
machine's PostgreSQL (whose configuration it never touches)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg
from django.conf import settings

from tests.support.pg_server import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def available() -> bool:
    return Path(PGBOUNCER).exists()


class PgBouncer:
    """`pgbouncer` with pool_mode=transaction and several server connections per database, so
    consecutive transactions of one client may run on different server sessions."""

    def __init__(self, tmp_path: Path) -> None:
        db = settings.DATABASES["default"]
        self.port = free_port()
        self.dir = tmp_path / "pgbouncer"
        self.dir.mkdir()
        (self.dir / "users.txt").write_text(f'"{db["USER"]}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            "default_pool_size = 4\n"
            "server_round_robin = 1\n"
            "max_client_conn = 200\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        self.log_path = self.dir / "pgbouncer.log"
        # PgBouncer will not run as root; it reads its files before it drops to `nobody`.
        user = ["-u", "nobody"] if _is_root() else []
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [PGBOUNCER, *user, str(self.dir / "pgbouncer.ini")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start: {self.log_path.read_text()}")
            time.sleep(0.05)

        self.open_server_connections(4)

    def open_server_connections(self, count: int) -> None:
        """Have PgBouncer open `count` server connections (`count` transactions at once), which
        it then hands out in turn (`server_round_robin`): a client's consecutive transactions run
        on different server sessions, as on a busy pooler."""
        clients = [psycopg.connect(self.database_url()) for _ in range(count)]
        try:
            for client in clients:
                client.execute("SELECT 1")  # opens a transaction, holding a server connection
            for client in clients:
                client.commit()  # a server left inside a transaction would be closed, not kept
        finally:
            for client in clients:
                client.close()

    def database_url(self) -> str:
        db = settings.DATABASES["default"]
        return f"postgres://{db['USER']}@127.0.0.1:{self.port}/{db['NAME']}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
