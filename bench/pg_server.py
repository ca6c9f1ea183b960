"""The benchmark's throwaway PostgreSQL: the tests' (tests/support/pg_server.py), durable like a
production server and logging every statement.

The bench never reconfigures the machine's shared server: it starts this one, so it can log every
statement (`log_statement=all`, each line prefixed with the client's `application_name` and
backend pid) and so the CPU of its backends is the bench's alone (`postmaster_pid`, a process
tree). fsync stays on, so a commit costs what it costs in production.
"""

import re

from tests.support.pg_server import PostgresServer, free_port

__all__ = ["ThrowawayPostgres", "free_port"]

STATEMENT_LOG = {
    "max_connections": "200",
    "log_statement": "all",
    "log_line_prefix": "%a|%p|%m|",
    "log_min_messages": "warning",
}
# One log line per statement, "<application_name>|<pid>|<time>|LOG:  statement: ..." (simple
# protocol) or "...LOG:  execute <name>: ..." (extended protocol: psycopg with parameters).
_STATEMENT = re.compile(rb"^([^|\n]*)\|\d+\|[^|\n]*\|LOG:  (?:statement|execute [^:]*):", re.M)


class ThrowawayPostgres(PostgresServer):
    """`with ThrowawayPostgres() as pg:` a running server at `pg.url(dbname)`, removed at exit."""

    def __init__(self):
        super().__init__(durable=True, settings=STATEMENT_LOG)

    @property
    def log_path(self):
        return self.log

    def log_offset(self):
        return self.log.stat().st_size

    def statements(self, start, end, application_name):
        """Statements logged between two log offsets by clients of `application_name`."""
        with self.log.open("rb") as log:
            log.seek(start)
            chunk = log.read(end - start)
        name = application_name.encode()
        return sum(1 for m in _STATEMENT.finditer(chunk) if m.group(1) == name)
