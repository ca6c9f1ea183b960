"""Who is alive, proven by PostgreSQL session advisory locks rather than guessed from clocks.

- An attempt: the worker's connection takes the job's lock in the statement that begins the
  attempt and gives it back in the statement that records its outcome. A `running` job whose lock
  nobody holds lost its worker (killed, out of memory, connection gone): PostgreSQL drops a
  session's locks with the session.
- A cluster's claims: the pusher's connection holds a lock of its own (`CLAIMS`, token) and tags
  the broker rows it claims with the token (`queues.django_q2.broker`). Rows tagged with a token
  nobody holds were claimed by a cluster that died.

SQLite has no advisory locks. There an attempt is presumed alive for its queue's timeout plus
`QUEUE_REDELIVERY_GRACE` after it began, and claims expire with django-q2's visibility timeout.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import connection

from queues.conf import conf

if TYPE_CHECKING:
    from queues.models import Job

# First key of the two-key locks that mark a cluster's claims ("slmy"); a job's lock has one key.
CLAIMS = 0x736C6D79


def supported():
    return connection.vendor == "postgresql"


def job_key_sql(job_id_sql):
    """SQL for the 64-bit lock key of a job: the first 8 bytes of its UUID."""
    return f"('x' || replace(left(({job_id_sql})::text, 18), '-', ''))::bit(64)::bigint"


def job_lock_held_sql(job_id_sql):
    """SQL that is true while some session holds the lock of the job `job_id_sql`.

    pg_locks shows a 64-bit key as its high (classid) and low (objid) halves, objsubid 1.
    """
    key = job_key_sql(job_id_sql)
    return (
        "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
        f" AND classid = (({key} >> 32) & 4294967295)::oid"
        f" AND objid = ({key} & 4294967295)::oid"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    )


def claims_lock_held_sql(token_sql):
    """SQL that is true while some session holds the claims lock with token `token_sql`."""
    return (
        "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
        f" AND classid = {CLAIMS} AND objid = ({token_sql})::oid"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    )


def release_job(job_id):
    """Give back the lock of `job_id` taken by this connection (paths that did not finish it)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_advisory_unlock({job_key_sql('%s::uuid')})", [str(job_id)])


def presumed_alive_for(job: Job) -> timedelta:
    """How long an attempt counts as alive where liveness cannot be proven (SQLite): its queue's
    timeout plus QUEUE_REDELIVERY_GRACE."""
    return timedelta(seconds=conf.QUEUES[job.queue]["timeout"] + conf.QUEUE_REDELIVERY_GRACE)
