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
"""

import hashlib
import json

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Case, F, Q, Value, When
from django.db.models.lookups import GreaterThan

STATE_BITS = {
    "queued": 1,
    "running": 2,
    "retrying": 4,
    "succeeded": 8,
    "failed": 16,
    "cancelled": 32,
}
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


def key_of(kind, data):
    """The unique key of a job of `kind` with (validated) `data`; "" if the type is not unique."""
    if kind.unique is None:
        return ""
    values = [kind.name, [data.get(name) for name in kind.unique.fields]]
    text = json.dumps(values, cls=DjangoJSONEncoder, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def states_mask(kind):
    return sum(STATE_BITS[s] for s in kind.unique.states) if kind.unique else 0
