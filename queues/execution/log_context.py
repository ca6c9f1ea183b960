"""Context carried into every log line: the request id, and for a job its ids.

Values live in a context variable so web requests and job runs each see their own. Only ids and
sizes ever go here: never titles or message content. The runner binds each job's ids here for its
own log lines; a project binds its request id (`slimy.request_id`) and puts the filter and the
JSON formatter in its `LOGGING`. Code never reads values back from here to decide anything: a
handler gets its job's ids from the job (`queues.api`), `enqueue` its request id from the caller.
"""

import contextvars
import json
import logging
import time
from contextlib import contextmanager

_context = contextvars.ContextVar("queues_log_context", default=None)


def current():
    """The fields bound to the running request or job."""
    return _context.get() or {}


@contextmanager
def bind(**fields):
    """Add `fields` to every log line written inside the block."""
    merged = {**current(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the bound fields on each record: `request_id`, plus ` key=value` pairs in `context`."""

    def filter(self, record):
        fields = current()
        record.request_id = fields.get("request_id", "-")
        for key, value in fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if k != "request_id")
        record.context = f" {extra}" if extra else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the bound fields, any traceback."""

    def format(self, record):
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **current(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
