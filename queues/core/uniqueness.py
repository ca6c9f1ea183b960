"""Unique jobs: the key a unique type's job is stored with, and the constraint that keeps it unique.

A job of a type declared `unique=Unique(fields, states)` stores `unique_key` (a hash of the type
and those data fields) and `unique_states` (a bit per status; 0 for other types). The partial
unique constraint `job_unique_key_idx` (declared on `Job`, condition `HOLDS_KEY`) holds a job's
key only while its status is one of its own `unique_states`, so PostgreSQL and SQLite refuse a
second job with that key in those statuses, whoever writes it and however concurrently; a job
leaving them frees its key without any write of ours (the runner, the rescuer and cancel need not
know about keys). Declared on the model, it survives SQLite's table rebuilds. Enqueueing on
PostgreSQL uses `INSERT ... ON CONFLICT (unique_key) WHERE <the constraint's condition> DO
NOTHING` (`queues.engine.postgresql.holds_key_sql`).

Two more kinds of key: a type unique over a `period` puts the start of the current window in it
(one job per key and window), and a periodic job's firing (`queues.core.periodic`) is keyed by
its declaration and time slot, held in every status (`slot_key`), so clusters firing one slot
together store one job.
"""

import hashlib
import json
from datetime import UTC, datetime

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Case, F, Q, Value, When
from django.db.models.lookups import GreaterThan
from django.utils import timezone

STATE_BITS = {
    "queued": 1,
    "running": 2,
    "retrying": 4,
    "succeeded": 8,
    "failed": 16,
    "cancelled": 32,
}
# Every status: a periodic job's slot, or a period's window, is held whatever became of its job.
ALL_STATES = sum(STATE_BITS.values())
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A job holds its key while the bit of its status is among its `unique_states`.
HOLDS_KEY = Q(
    GreaterThan(
        F("unique_states").bitand(
            Case(
                *(When(status=state, then=Value(bit)) for state, bit in STATE_BITS.items()),
                default=Value(0),
            )
        ),
        0,
    )
)


def key_of(kind, data, now=None):
    """The unique key of a job of `kind` with (validated) `data`; "" if the type is not unique.

    With a `period`, the start of the window holding `now` (default: the current time) is part
    of the key, so the next window's jobs hold another key."""
    if kind.unique is None:
        return ""
    values = [kind.name, [data.get(name) for name in kind.unique.fields]]
    if kind.unique.period is not None:
        values.append(window_start(now or timezone.now(), kind.unique.period).isoformat())
    return _digest(values)


def window_start(moment, period):
    """The start of the window of length `period` (aligned on the Unix epoch) holding `moment`."""
    return EPOCH + period * ((moment - EPOCH) // period)


def slot_key(job_type, periodic, slot):
    """The key of the job a periodic declaration (`periodic`, its name) fires for its time slot
    starting at `slot`: the same for every cluster firing that slot (`queues.core.periodic`)."""
    return _digest([job_type, "slot", periodic, slot.astimezone(UTC).isoformat()])


def _digest(values):
    text = json.dumps(values, cls=DjangoJSONEncoder, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def states_mask(kind):
    return sum(STATE_BITS[s] for s in kind.unique.states) if kind.unique else 0
