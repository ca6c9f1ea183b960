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

from queues.conf import conf

if TYPE_CHECKING:
    from queues.models import Job

# First key of the two-key locks that mark a cluster's claims ("slmy"); a job's lock has one key.
CLAIMS = 0x736C6D79


def presumed_alive_for(job: Job) -> timedelta:
    """How long an attempt counts as alive where liveness cannot be proven (SQLite): its queue's
    timeout plus `QUEUE_REDELIVERY_GRACE`."""
    return timedelta(seconds=conf.QUEUES[job.queue]["timeout"] + conf.QUEUE_REDELIVERY_GRACE)
