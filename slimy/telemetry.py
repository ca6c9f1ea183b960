"""OpenTelemetry tracing for the whole process, set up from OpenTelemetry's own variables.

`configure()` runs once in every process at start-up when tracing is on (SlimyConfig.ready:
gunicorn workers, runserver, qcluster, other manage.py commands); when it is off this module is
not even imported. It installs a tracer provider (service name, sampler, endpoint, headers and
batch delays read by the SDK from OTEL_*), traces Django requests and psycopg queries, and turns
on job traces (`queues.execution.tracing`).

qcluster forks its workers after this. The SDK's batch processor restarts its export thread in
each child (os.register_at_fork), but multiprocessing ends a child with os._exit, which skips the
provider's atexit flush; so each forked child flushes its spans on its own way out.
"""

from multiprocessing import util as multiprocessing_util

from django.conf import settings
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

from queues.execution import tracing

_provider = None


def configure(exporter=None):
    """Install tracing once per process; spans go to `exporter` or the one OTEL_* names."""
    global _provider
    if _provider is None:
        provider = TracerProvider()
        # The sampler the SDK chose from OTEL_TRACES_SAMPLER, minus traces of lone queries.
        provider.sampler = QueriesInTracesOnly(provider.sampler)
        provider.add_span_processor(BatchSpanProcessor(exporter or _configured_exporter()))
        trace.set_tracer_provider(provider)
        DjangoInstrumentor().instrument(
            tracer_provider=provider, excluded_urls=settings.TRACES_EXCLUDED_URLS
        )
        PsycopgInstrumentor().instrument(tracer_provider=provider)
        tracing.enable(provider)
        multiprocessing_util.register_after_fork(provider, _flush_on_child_exit)
        _provider = provider
    return _provider


def _configured_exporter():
    # Either reads its endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*.
    return ConsoleSpanExporter() if settings.TRACES_EXPORTER == "console" else OTLPSpanExporter()


def _flush_on_child_exit(provider):
    # Finalizers with a priority run in a multiprocessing child just before its os._exit.
    multiprocessing_util.Finalize(provider, provider.shutdown, exitpriority=100)


class QueriesInTracesOnly(Sampler):
    """Drops a database query span that has no parent; asks the configured sampler otherwise.

    Queries inside a request or a job attempt belong to its trace. The cluster's own polling,
    claims and heartbeats run outside any, and would each start a trace of one span.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def should_sample(
        self, parent_context, trace_id, name, kind=None, attributes=None, links=None, *rest
    ):
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind == trace.SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self.sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, *rest
        )

    def get_description(self):
        return f"QueriesInTracesOnly{{{self.sampler.get_description()}}}"
