"""Traces across the queue: from the request that enqueues a job through each of its attempts."""

import importlib

import pytest
import requests
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision
from rest_framework.authtoken.models import Token

from chat.models import Conversation, Message
from queues.api import enqueue
from queues.execution import tracing
from queues.execution.runner import run_job
from queues.models import Job
from slimy.telemetry import QueriesInTracesOnly
from tests.support.cluster import test_database_url as database_url
from tests.support.cluster import wait_for
from tests.support.jobs import wait_for_job
from tests.support.otlp import OtlpReceiver

SECRET = "a title nobody else may read"


@pytest.fixture
def spans():
    """Job tracing on, into an in-memory exporter; returns (exporter, tracer for a 'request')."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter, provider.get_tracer("tests")
    tracing.disable()


def attempts_of(exporter, job_type):
    return [s for s in exporter.get_finished_spans() if s.name == f"process {job_type}"]


def run_retry_now(job):
    Job.objects.filter(pk=job.pk).update(run_after=timezone.now())
    run_job(job.pk)


@pytest.mark.django_db
def test_without_tracing_a_job_stores_no_context_and_its_attempts_make_no_spans(user):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("tests").start_as_current_span("a request traced elsewhere"):
        job = enqueue("test_flaky", {"user_id": user.pk})
        run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.trace_context) == ("succeeded", {})
    assert [span.name for span in exporter.get_finished_spans()] == ["a request traced elsewhere"]


@pytest.mark.django_db
def test_every_attempt_is_a_span_in_the_enqueuers_trace_and_a_retry_links_to_the_failure(
    user, spans
):
    exporter, tracer = spans
    with tracer.start_as_current_span("DELETE /api/...", kind=trace.SpanKind.SERVER) as request:
        job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    stored = Job.objects.get(pk=job.pk).trace_context
    assert f"{request.get_span_context().trace_id:032x}" in stored["enqueued"]["traceparent"]

    run_job(job.pk)
    run_retry_now(job)

    first, second = attempts_of(exporter, "test_flaky")
    for span, attempt in ((first, 1), (second, 2)):
        assert span.kind == trace.SpanKind.CONSUMER
        assert span.context.trace_id == request.get_span_context().trace_id
        assert span.parent.span_id == request.get_span_context().span_id
        assert span.attributes["messaging.destination.name"] == "database"
        assert span.attributes["messaging.message.id"] == str(job.pk)
        assert span.attributes["job.type"] == "test_flaky"
        assert span.attributes["job.attempt"] == attempt
    assert first.attributes["job.outcome"] == "retrying"
    assert first.attributes["error.type"] == "OperationalError"
    assert first.status.status_code == trace.StatusCode.ERROR
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert second.attributes["job.outcome"] == "succeeded"
    assert "error.type" not in second.attributes
    assert second.status.status_code == trace.StatusCode.UNSET


@pytest.mark.django_db
def test_a_job_failing_for_good_says_so_with_its_error_class_and_no_message(user, spans):
    exporter, _ = spans
    job = enqueue("test_permanent", {"user_id": user.pk})
    run_job(job.pk)
    (span,) = attempts_of(exporter, "test_permanent")
    assert span.attributes["job.outcome"] == "failed"
    assert span.attributes["error.type"] == "PermanentJobError"
    assert span.events == () and span.status.description is None  # the message stays out


@pytest.mark.django_db
def test_attempt_spans_carry_no_job_content(user, spans):
    exporter, _ = spans
    job = enqueue("create_conversation", {"user_id": user.pk, "title": SECRET})
    run_job(job.pk)
    (span,) = attempts_of(exporter, "create_conversation")
    assert set(span.attributes) == {
        "messaging.operation.type",
        "messaging.destination.name",
        "messaging.message.id",
        "job.type",
        "job.attempt",
        "job.outcome",
    }
    assert SECRET not in str(dict(span.attributes))


@pytest.mark.django_db
def test_a_job_enqueued_outside_any_trace_runs_as_a_trace_of_its_own(user, spans):
    exporter, _ = spans
    job = enqueue("test_sleep", {"user_id": user.pk})
    assert Job.objects.get(pk=job.pk).trace_context == {}
    run_job(job.pk)
    (span,) = attempts_of(exporter, "test_sleep")
    assert span.parent is None and span.attributes["job.outcome"] == "succeeded"


def test_queries_outside_a_request_or_job_start_no_trace():
    sampler = QueriesInTracesOnly(ALWAYS_ON)
    tracer = TracerProvider().get_tracer("tests")

    def decision(kind, parent=None):
        context = trace.set_span_in_context(parent) if parent else None
        return sampler.should_sample(context, 1, "SELECT", kind=kind).decision

    assert decision(trace.SpanKind.CLIENT) == Decision.DROP
    with tracer.start_as_current_span("attempt") as attempt:
        assert decision(trace.SpanKind.CLIENT, attempt) == Decision.RECORD_AND_SAMPLE
    assert decision(trace.SpanKind.SERVER) == Decision.RECORD_AND_SAMPLE


@pytest.mark.parametrize(
    "env, exporter",
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "slimy"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_name_an_exporter(
    monkeypatch, env, exporter
):
    assert exporter_under(monkeypatch, env) == exporter


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_an_exporter_that_is_not_installed_is_refused_at_start(monkeypatch, env):
    with pytest.raises(ImproperlyConfigured):
        exporter_under(monkeypatch, env)


def exporter_under(monkeypatch, env):
    """TRACES_EXPORTER of slimy.settings evaluated afresh under `env` (OTEL_* replaced)."""
    import slimy.settings

    for name in list(slimy.settings.os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return importlib.reload(slimy.settings).TRACES_EXPORTER
    finally:
        monkeypatch.undo()
        importlib.reload(slimy.settings)


@pytest.mark.postgres
@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_one_trace_from_a_delete_request_through_a_retried_job_in_a_real_cluster(
    web, cluster, user
):
    """gunicorn and qcluster export over OTLP, as configured in production, to a receiver."""
    receiver = OtlpReceiver()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    server = web.start(extra_env={**otel, "OTEL_SERVICE_NAME": "slimy-web"})
    conversation = Conversation.objects.create(owner=user, title=SECRET)
    Message.objects.create(conversation=conversation, role="user", content=SECRET)
    token = Token.objects.create(user=user).key
    response = requests.delete(
        f"{server.url}/api/chat/conversations/{conversation.pk}",
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    assert response.status_code == 200, server.log_path.read_text()
    job = Job.objects.get(pk=response.json()["job_id"])

    # The first attempt waits for the conversation's row lock, which this test holds, and
    # fails with PostgreSQL's lock timeout; its retry finds the row free.
    worker_db = database_url() + "?options=-c%20lock_timeout%3D300"
    with transaction.atomic():
        Conversation.objects.select_for_update().get(pk=conversation.pk)
        cluster.start(
            workers=2,
            extra_env={**otel, "OTEL_SERVICE_NAME": "slimy-worker", "DATABASE_URL": worker_db},
        )
        wait_for_job(job.pk, until="retrying", timeout=30, interval=0.1)
    wait_for_job(job.pk, until="succeeded", timeout=30, interval=0.1)
    cluster.stop_all()  # workers flush their spans on the way out
    web.stop_all()

    def trace_of_the_request():
        requests_ = [s for s in receiver.spans if s.kind == "SPAN_KIND_SERVER"]
        attempts = [s for s in receiver.spans if s.name == "process delete_conversation"]
        return (requests_, attempts) if requests_ and len(attempts) == 2 else None

    (request,), (first, second) = wait_for(trace_of_the_request, 10, 0.1, "exported spans")
    receiver.stop()
    assert request.service == "slimy-web" and request.name.startswith("DELETE"), request.name
    assert {first.service, second.service} == {"slimy-worker"}
    assert {first.trace_id, second.trace_id} == {request.trace_id}
    assert {first.parent_id, second.parent_id} == {request.span_id}
    assert first.attributes["job.attempt"] == 1 and second.attributes["job.attempt"] == 2
    assert first.attributes["job.outcome"] == "retrying" and first.error
    assert first.attributes["error.type"] == "OperationalError"
    assert second.attributes["job.outcome"] == "succeeded"
    assert second.links == [(first.trace_id, first.span_id)]
    assert first.attributes["messaging.message.id"] == str(job.pk)

    # The handler's SQL, under the attempt that ran it.
    queries = [s for s in receiver.spans if s.parent_id == second.span_id]
    statements = " ".join(
        str(s.attributes.get("db.query.text") or s.attributes.get("db.statement")) for s in queries
    )
    assert 'DELETE FROM "chat_conversation"' in statements, statements
    assert all(s.trace_id == request.trace_id for s in queries)
    # Ids and statements with placeholders only: no title or message content anywhere.
    assert SECRET not in str([s.attributes for s in receiver.spans])
    # The cluster's own polling starts no trace of its own.
    assert {s.trace_id for s in receiver.spans} == {request.trace_id}
