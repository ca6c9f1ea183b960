"""Job traces: a job carries its enqueuer's trace context, and each attempt is a span in it.

`capture()` gives the current trace context (the web request's) to store with a job when it is
enqueued, in the same row and transaction. In the worker, `attempt(job)` wraps one attempt in a
CONSUMER span whose parent is that context, so the request and every attempt of its job are one
trace, and the SQL the handler runs (psycopg instrumentation) nests under the attempt. Each
attempt links to the job's previous one, so a retry leads back to the failure before it.

Attributes are ids, counts and class names: queue, job type, job id, attempt, outcome
(`succeeded`, `retrying`, `failed`) and error class, never the job's data, result or error
message (which may quote user content).

The outcome is read from the job record as the runner saves it (a pre_save receiver), so the
runner needs no more than the `attempt` context manager. Off until `enable()` (slimy.telemetry
calls it when tracing is configured): then `capture()` and `attempt()` cost one check.
"""

from contextlib import contextmanager
from contextvars import ContextVar

from django.db.models.signals import pre_save
from opentelemetry import propagate, trace

from queues.models import Job

_tracer = None
# The attempt this process is running: (job id, its span).
_running = ContextVar("queues_tracing_attempt", default=None)


def enable(tracer_provider=None):
    global _tracer
    _tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
    pre_save.connect(_record_outcome, sender=Job, dispatch_uid="queues.tracing")


def disable():
    global _tracer
    _tracer = None
    pre_save.disconnect(sender=Job, dispatch_uid="queues.tracing")


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


def _record_outcome(sender, instance, **kwargs):
    """On the save ending the running attempt: its outcome on the span, a link for the next."""
    running = _running.get()
    if running is None or running[0] != instance.pk or instance.status == Job.Status.RUNNING:
        return
    span = running[1]
    span.set_attribute("job.outcome", str(instance.status))
    if instance.status != Job.Status.SUCCEEDED:
        _mark_error(span, instance.last_error_class)
        # Saved with this row (a failure saves the whole job), read by the next attempt.
        instance.trace_context = {**(instance.trace_context or {}), "last_attempt": _carrier(span)}


def _mark_error(span, error_class):
    if error_class:
        span.set_attribute("error.type", error_class)
    span.set_status(trace.StatusCode.ERROR)


def _carrier(span):
    carrier = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier
