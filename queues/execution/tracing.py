"""Job traces: a job carries its enqueuer's trace context, and each attempt is a span in it.

`capture()` gives the current trace context (the web request's) to store with a job when it is
enqueued, in the same row and transaction. In the worker, `attempt(job)` wraps one attempt in a
CONSUMER span whose parent is that context, so the request and every attempt of its job are one
trace, and the SQL the handler runs (psycopg instrumentation) nests under the attempt. Each
attempt links to the job's previous one, so a retry leads back to the failure before it.

Attributes are ids, counts and class names: queue, job type, job id, attempt, outcome
(`succeeded`, `retrying`, `failed`) and error class, never the job's data, result or error
message (which may quote user content).

The runner wraps an attempt in `attempt(job)` and passes the outcome it is about to write through
`outcome_fields`, which returns what to store with it (the link for the next attempt). Off until
`enable()` (slimy.telemetry calls it when tracing is configured): then `capture()`, `attempt()`
and `outcome_fields()` cost one check.
"""

from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry import propagate, trace

from queues.models import Job

_tracer = None
# The attempt this process is running: (job id, its span).
_running = ContextVar("queues_tracing_attempt", default=None)


def enable(tracer_provider=None):
    global _tracer
    _tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)


def disable():
    global _tracer
    _tracer = None


def enabled():
    return _tracer is not None


def capture():
    """The trace context to store with a job enqueued now; empty when tracing is off."""
    if _tracer is None:
        return {}
    enqueued = _carrier(trace.get_current_span())
    return {"enqueued": enqueued} if enqueued else {}


@contextmanager
def attempt(job):
    """Trace one attempt of `job` (already begun: its `attempts` counts this one)."""
    if _tracer is None:
        yield
        return
    stored = job.trace_context or {}
    previous = trace.get_current_span(propagate.extract(stored.get("last_attempt", {})))
    previous_context = previous.get_span_context()
    links = [trace.Link(previous_context)] if previous_context.is_valid else []
    with _tracer.start_as_current_span(
        f"process {job.job_type}",
        context=propagate.extract(stored.get("enqueued", {})),
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.pk),
            "job.type": job.job_type,
            "job.attempt": job.attempts,
        },
        # The exception's message and traceback may quote user content: its class only.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        token = _running.set((job.pk, span))
        try:
            yield
        except BaseException as exc:
            # The outcome could not be recorded (the runner lets only that escape).
            _mark_error(span, exc.__class__.__name__)
            raise
        finally:
            _running.reset(token)


def outcome_fields(job, fields):
    """Put the outcome the runner writes (`fields`) on the attempt's span; return what to store
    with it: for a retry or a failure, the span's context, which the next attempt links to."""
    running = _running.get()
    if running is None or running[0] != job.pk:
        return {}
    span = running[1]
    span.set_attribute("job.outcome", str(fields["status"]))
    if fields["status"] == Job.Status.SUCCEEDED:
        return {}
    if fields["status"] != Job.Status.QUEUED:  # queued again: snoozed, not an error
        _mark_error(span, fields.get("last_error_class"))
    return {"trace_context": {**(job.trace_context or {}), "last_attempt": _carrier(span)}}


def _mark_error(span, error_class):
    if error_class:
        span.set_attribute("error.type", error_class)
    span.set_status(trace.StatusCode.ERROR)


def _carrier(span):
    carrier = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier
