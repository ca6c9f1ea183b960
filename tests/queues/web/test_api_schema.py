"""The OpenAPI schema, its docs page, and schemathesis hammering the app with what it generates."""

import os

import pytest
import schemathesis
from django.contrib.staticfiles import finders
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from rest_framework.authtoken.models import Token

from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db

# Examples per operation. CI runs 50, freshly random each run; for a longer hunt:
# API_FUZZ_EXAMPLES=2000 scripts/test tests/queues/web/test_api_schema.py -k generated
EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "50"))


@pytest.fixture
def wsgi_app(settings):
    """The real WSGI app, in-process, inside the test's transaction (as Django's test client
    does, the connection is not closed around each request)."""
    settings.ALLOWED_HOSTS = ["localhost"]
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield get_wsgi_application()
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


def test_generated_requests_get_no_5xx_and_conform_to_the_schema(user, operator_user, wsgi_app):
    """700 requests generated from the schema, valid and not, across the 15 operations."""
    # A few real conversations, so generated small ids sometimes find one.
    for n in range(3):
        conversation = Conversation.objects.create(owner=user, title=f"Seed {n}")
        Message.objects.create(conversation=conversation, role="user", content="hi")
    headers = {"Authorization": f"Token {Token.objects.get_or_create(user=user)[0].key}"}
    # The stats (queues.view_job) are called by an operator, so their 200 answers are checked too.
    staff_headers = {"Authorization": f"Token {Token.objects.create(user=operator_user).key}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", wsgi_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 15

    for operation in operations:

        @given(
            case=operation.as_strategy(schemathesis.GenerationMode.POSITIVE)
            | operation.as_strategy(schemathesis.GenerationMode.NEGATIVE)
        )
        @hypothesis_settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def call(case):
            # Every check but "schema-valid data is accepted": a wrong password or an unknown
            # job type is schema-valid and still, rightly, a 400.
            case.call_and_validate(
                headers=staff_headers if case.path.endswith("/stats/") else headers,
                excluded_checks=[schemathesis.checks.positive_data_acceptance],
            )

        call()


def test_schema_documents_every_endpoint_and_its_error_statuses(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths) == {
        "/api/auth/token/",
        "/api/chat/conversations/",
        "/api/chat/conversations/{id}/",
        "/api/chat/conversations/{id}/messages/",
        "/api/queues/jobs/",
        "/api/queues/jobs/bulk/",
        "/api/queues/jobs/{job_id}/",
        "/api/queues/jobs/{job_id}/retry/",
        "/api/queues/jobs/{job_id}/cancel/",
        "/api/queues/stats/",
    }
    token = paths["/api/auth/token/"]["post"]["responses"]
    assert set(token) == {"200", "400", "406", "413", "415", "429"}
    delete = paths["/api/chat/conversations/{id}/"]["delete"]["responses"]
    assert set(delete) == {"200", "401", "403", "404", "406"}
    post_message = paths["/api/chat/conversations/{id}/messages/"]["post"]["responses"]
    assert set(post_message) == {"201", "400", "401", "403", "404", "406", "413", "415"}
    stats = paths["/api/queues/stats/"]["get"]["responses"]
    assert set(stats) == {"200", "401", "403", "406"}
    listing = paths["/api/queues/jobs/"]["get"]
    assert set(listing["responses"]) == {"200", "400", "401", "403", "406"}
    assert {"status", "job_type", "queue", "subject", "q", "cursor", "page_size"} <= {
        parameter["name"] for parameter in listing["parameters"]
    }
    for enqueue in ("/api/queues/jobs/", "/api/queues/jobs/bulk/"):
        responses = paths[enqueue]["post"]["responses"]
        assert set(responses) == {"200", "202", "400", "401", "403", "406", "413", "415", "429"}


def test_docs_page_serves_swagger_ui_from_our_own_static_files(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "http://" not in page and "https://" not in page
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
