"""Surviving a dropped database connection on its next use, in every process of a cluster.

A `qcluster` process keeps its connection for its life (`CONN_MAX_AGE`) and skips Django's health
check per job (a `SELECT 1` each time). When the server ends the session while the process is
idle (a restart, a failover, `pg_terminate_backend`, a proxy closing idle connections), the
process learns it from its next statement, which fails. Each place a cluster process uses the
database (`once` callers: the runner's begin, the heartbeat, the monitor's acknowledgement, the
broker) then drops the dead connection, and the cursor `queues.engine.statements.hot_cursor` kept on
it, and runs its step again on a fresh connection. Nothing is paid until a connection dies.
"""

import functools
import logging
import select

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from queues.engine.statements import forget_hot_cursor

logger = logging.getLogger("queues.reconnect")


def lost(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the connection `using` is gone: closed by Django (the rollback after an error in
    `transaction.atomic` failed), or closed by psycopg once a statement met the end of its
    session."""
    db = connections[using]
    return db.connection is None or getattr(db.connection, "closed", False)


def drop(using: str = DEFAULT_DB_ALIAS) -> None:
    """Forget the connection `using` and the cursor kept on it; the next use opens a fresh one."""
    db = connections[using]
    forget_hot_cursor(db)
    db.close()


def drop_if_lost(using: str = DEFAULT_DB_ALIAS) -> bool:
    """After an error a caller handled: drop the connection `using` if it was lost (outside a
    transaction); whether it was."""
    if connections[using].in_atomic_block or not lost(using):
        return False
    drop(using)
    return True


def drop_if_hung_up(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Drop the idle connection `using` if the server has ended its session; whether it did.

    A server ending a session says so (its last message, then end of file), so the socket of an
    idle connection reads as ready: a system call tells, without a round trip. Only then does the
    connection get Django's health check (`is_usable`, one round trip), since a notice may have
    arrived instead. For a process that waits between uses (the sentinel, every guard cycle).
    """
    db = connections[using]
    pg = db.connection
    if pg is None or db.in_atomic_block or db.vendor != "postgresql":
        return False
    if not pg.closed:
        socket = select.poll()
        socket.register(pg.fileno(), select.POLLIN)
        if not socket.poll(0) or db.is_usable():
            return False
    logger.warning("database connection closed by the server; reconnecting")
    drop(using)
    return True


def once(func=None, *, using: str = DEFAULT_DB_ALIAS):
    """Decorator: call `func`; if it failed because its connection was lost, drop the connection
    and call it again, once, on a fresh one. A second failure (the server is down) escapes.

    Only for a step that is safe to run again when its first run failed: a lost session rolled
    back what it had not committed, and the step's own statements are idempotent or guarded by
    the job's state (the runner's begin). Never inside a transaction of the caller's, which the
    lost session took with it.
    """
    if func is None:
        return functools.partial(once, using=using)

    @functools.wraps(func)
    def call(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DatabaseError as exc:
            if connections[using].in_atomic_block or not lost(using):
                raise
            logger.warning(
                "database connection lost (%s: %s); reconnecting",
                exc.__class__.__name__,
                str(exc).strip().splitlines()[0] if str(exc).strip() else "",
            )
            drop(using)
        return func(*args, **kwargs)

    return call
