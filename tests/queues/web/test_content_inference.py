"""Content fields reach their owner only, also by inference: a view-only operator (staff holding
`queues.view_job` alone) probes every list with lookups, orderings and searches on hidden
values, and the answer never depends on whether the guess was right."""

import re

import pytest
from django.test import Client

from chat.models import Conversation
from queues.api import enqueue
from queues.models import Job
from tests.support.clients import token_client
from tests.support.users import grant

pytestmark = pytest.mark.django_db

SECRET = "PIN 4821 my-secret"
ADMIN, DASHBOARD = "/admin/queues/job/", "/dashboard/queues/jobs"
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# (parameter, a value the secret matches, one it does not): a right and a wrong guess.
GUESSES = [
    ("data__title__startswith", "PIN 4", "PIN 5"),
    ("data__title", SECRET, "PIN 0000"),
    ("data__title__contains", "4821", "4822"),
    ("data__content__startswith", "PIN 4", "PIN 5"),
    ("data__icontains", "pin 4821", "pin 4822"),
    ("traceback__contains", "Integrity", "Nothing"),
    ("last_error__startswith", "conv", "XYZ"),
    ("last_error_class", "IntegrityError", "ValueError"),
    ("result__isnull", "False", "True"),
    ("result__conversation_id", "7", "8"),
    ("created_at__year", "2000", "1999"),  # a date hierarchy the page does not show
    ("q", "PIN 4", "PIN 5"),
    ("o", "-4", "4"),
]


@pytest.fixture
def viewer(make_user):
    """An operator who may only look: `queues.view_job`, nothing else."""
    viewer = make_user("viewer", is_staff=True)
    grant(viewer, "view_job")
    client = Client()
    client.force_login(viewer)
    return client


@pytest.fixture
def secret_jobs(user):
    """Alice's failed job whose title holds the secret, beside a plain one."""
    secret = enqueue("create_conversation", {"user_id": user.pk, "title": SECRET})
    Job.objects.filter(pk=secret.pk).update(
        status="failed",
        last_error="conversation 7 of user 1 is not available",
        last_error_class="IntegrityError",
        traceback="Traceback (most recent call last):\nIntegrityError: conversation 7",
        result={"conversation_id": 7},
    )
    plain = enqueue("create_conversation", {"user_id": user.pk, "title": "Hello"})
    return secret, plain


def listed(response):
    """(status, the job ids the page lists, in order)."""
    return response.status_code, list(dict.fromkeys(JOB_ID.findall(response.content.decode())))


@pytest.mark.parametrize(("parameter", "right", "wrong"), GUESSES)
def test_an_admin_list_lookup_cannot_tell_a_right_guess_from_a_wrong_one(
    viewer, secret_jobs, parameter, right, wrong
):
    on_right = viewer.get(ADMIN, {parameter: right})
    on_wrong = viewer.get(ADMIN, {parameter: wrong})
    assert listed(on_right) == listed(on_wrong)
    assert on_right.status_code in (200, 400)
    if parameter not in ("q", "o"):  # every lookup but the shown filters is refused outright
        assert on_right.status_code == 400
    assert SECRET not in on_right.content.decode()


def test_the_admin_list_takes_the_filters_it_shows(viewer, secret_jobs):
    secret, _ = secret_jobs
    failed = viewer.get(ADMIN, {"status__exact": "failed"})
    assert failed.status_code == 200
    assert listed(failed) == (200, [str(secret.pk)])
    for shown in ({"queue": "database"}, {"job_type": "create_conversation"}, {"_facets": "1"}):
        assert viewer.get(ADMIN, shown).status_code == 200
    # A search names subjects, request ids and usernames, never content.
    assert str(secret.pk) in viewer.get(ADMIN, {"q": "alice"}).content.decode()


def test_a_refused_admin_lookup_is_a_400_page_not_a_500(viewer, secret_jobs):
    response = viewer.get(ADMIN, {"data__title__startswith": "PIN"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Filter not offered" in page and "data__title__startswith" in page


@pytest.mark.parametrize(("parameter", "right", "wrong"), GUESSES)
def test_the_dashboard_search_ignores_lookups_it_does_not_offer(
    viewer, secret_jobs, parameter, right, wrong
):
    on_right = viewer.get(DASHBOARD, {parameter: right})
    on_wrong = viewer.get(DASHBOARD, {parameter: wrong})
    assert on_right.status_code == 200
    assert listed(on_right) == listed(on_wrong)
    assert set(listed(on_right)[1]) >= {str(job.pk) for job in secret_jobs}
    assert SECRET not in on_right.content.decode()


def test_the_job_api_shows_the_viewer_no_content_whatever_the_query(make_user, user, secret_jobs):
    viewer = make_user("api-viewer")
    grant(viewer, "view_job")
    secret, _ = secret_jobs
    url = f"/api/queues/jobs/{secret.pk}"
    bodies = [
        token_client(viewer).get(url, {parameter: value}).content
        for parameter, right, wrong in GUESSES
        for value in (right, wrong)
    ]
    assert len(set(bodies)) == 1
    assert SECRET.encode() not in bodies[0]
    assert token_client(user).get(url).json()["data"]["title"] == SECRET


def test_a_conversation_admin_search_needs_the_right_to_see_conversations(viewer, conversation):
    """The job viewer is no conversation viewer: titles are not searchable from there either."""
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    response = viewer.get("/admin/chat/conversation/", {"q": conversation.title})
    assert response.status_code == 403
