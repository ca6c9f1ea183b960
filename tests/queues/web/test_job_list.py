"""`GET /api/queues/jobs`: who sees which jobs, every filter, cursor pages, bad parameters."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chat.models import Conversation
from queues.api import enqueue
from queues.models import Job
from queues.web.views import EnqueueRateThrottle
from tests.support.clients import enqueue_via_api, token_client

pytestmark = pytest.mark.django_db

JOBS = "/api/queues/jobs"
NOW = timezone.now().replace(microsecond=0)


def make_job(user, status="succeeded", job_type="test_sleep", *, age=timedelta(0), **fields):
    """A job of `user` enqueued `age` ago that has reached `status`."""
    job = enqueue(job_type, {"user_id": user.pk})
    finished = NOW - age + timedelta(seconds=1) if status in Job.FINISHED else None
    Job.objects.filter(pk=job.pk).update(
        status=status, created_at=NOW - age, finished_at=finished, **fields
    )
    return Job.objects.get(pk=job.pk)


def listed(client, **query):
    response = client.get(JOBS, query)
    assert response.status_code == 200, response.content
    return [job["id"] for job in response.json()["results"]]


def ids(*jobs):
    return [str(job.pk) for job in jobs]


def test_users_list_their_own_jobs_newest_first(api, user, other_user):
    older = make_job(user, age=timedelta(minutes=2))
    newer = make_job(user, age=timedelta(minutes=1))
    make_job(other_user)
    assert listed(api) == ids(newer, older)


def test_view_job_lists_everyones_jobs_with_content_redacted(user, api, operator_api):
    conversation = Conversation.objects.create(owner=user, title="Mine")
    text = "é" * 1204
    data = {"conversation_id": conversation.pk, "role": "user", "content": text}
    job_id = enqueue_via_api(api, "save_message", data).json()["id"]
    mine = api.get(JOBS).json()["results"]
    assert [job["data"]["content"] for job in mine] == [text]
    shown = operator_api.get(JOBS).json()["results"]
    assert [(job["id"], job["data"]["content"]) for job in shown] == [(job_id, "[1,204 chars]")]
    # Exactly what the job's own page shows the operator.
    assert shown[0] == operator_api.get(f"{JOBS}/{job_id}").json()


def test_each_filter_finds_exactly_the_jobs_it_names(operator_api, user, other_user):
    old_failed = make_job(user, "failed", "test_permanent", age=timedelta(days=3))
    failed = make_job(user, "failed", "test_permanent", age=timedelta(hours=2))
    cancelled = make_job(other_user, "cancelled", age=timedelta(hours=1))
    queued = make_job(other_user, "queued", subject="thing:1", request_id="req-1")

    assert listed(operator_api, status="failed") == ids(failed, old_failed)
    assert listed(operator_api, status="failed,cancelled") == ids(cancelled, failed, old_failed)
    both = operator_api.get(f"{JOBS}?status=queued&status=cancelled").json()["results"]
    assert [job["id"] for job in both] == ids(queued, cancelled)
    assert listed(operator_api, job_type="test_permanent") == ids(failed, old_failed)
    assert listed(operator_api, queue="database") == ids(queued, cancelled, failed, old_failed)
    assert listed(operator_api, subject="thing:1") == ids(queued)
    assert listed(operator_api, request_id="req-1") == ids(queued)
    assert listed(operator_api, user=other_user.username) == ids(queued, cancelled)
    assert listed(operator_api, user=str(user.pk)) == ids(failed, old_failed)
    assert listed(operator_api, q="thing:1") == ids(queued)
    assert listed(operator_api, q="req-1") == ids(queued)
    assert listed(operator_api, q=str(failed.pk)) == ids(failed)
    since = (NOW - timedelta(hours=3)).isoformat()
    until = (NOW - timedelta(minutes=30)).isoformat()
    assert listed(operator_api, created_after=since, created_before=until) == ids(cancelled, failed)
    assert listed(operator_api, finished_before=until) == ids(cancelled, failed, old_failed)
    assert listed(operator_api, status="failed", created_after=since) == ids(failed)


def test_cursor_pages_walk_every_job_once_both_ways(api, user):
    # Two of them share a creation time (a bulk enqueue does): the cursor still tells them apart.
    jobs = [make_job(user, age=timedelta(minutes=n)) for n in (0, 1, 1, 2, 3, 4, 5)]
    seen, pages, url = [], [], f"{JOBS}?page_size=3"
    while url:
        page = api.get(url).json()
        pages.append(page)
        seen += [job["id"] for job in page["results"]]
        url = page["next"]
    assert sorted(seen) == sorted(ids(*jobs)) and len(set(seen)) == 7
    assert [len(page["results"]) for page in pages] == [3, 3, 1]
    back = api.get(pages[-1]["previous"]).json()
    assert [job["id"] for job in back["results"]] == seen[3:6]


def test_listing_does_not_spend_the_enqueue_rate(api, monkeypatch):
    monkeypatch.setattr(EnqueueRateThrottle, "THROTTLE_RATES", {"enqueue": "2/minute"})
    for _ in range(5):
        assert api.get(JOBS).status_code == 200
    assert [enqueue_via_api(api, "test_sleep", {}).status_code for _ in range(3)] == [202, 202, 429]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("status=finished", "status"),
        ("status=failed,nope", "status"),
        ("job_type=no_such_type", "job_type"),
        ("queue=elsewhere", "queue"),
        ("created_after=yesterday", "created_after"),
        ("finished_before=2026-13-01", "finished_before"),
        ("created_after=2026-02-02T00:00Z&created_before=2026-02-01T00:00Z", "created_before"),
        ("subject=" + "s" * 129, "subject"),
        ("subject=a&subject=b", "subject"),
        ("q=%00", "q"),
        ("finished_before=0001-01-01T00:10:00%2B05:00", "finished_before"),
        ("created_before=", "created_before"),
        ("status=", "status"),
        ("status=,", "status"),
        ("stauts=failed", "stauts"),
        ("cursor=not-a-cursor", "cursor"),
        ("page_size=0", "page_size"),
        ("page_size=201", "page_size"),
        ("page_size=ten", "page_size"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(api, query, parameter):
    response = api.get(f"{JOBS}?{query}")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "invalid" and list(body["fields"]) == [parameter], body


def test_filters_tell_a_user_nothing_about_other_users_jobs(user, other_user, api):
    """Filtering on what someone else's jobs hold answers exactly as for what no job holds."""
    theirs = Conversation.objects.create(owner=other_user, title="Theirs")
    data = {"conversation_id": theirs.pk, "role": "user", "content": "secret"}
    foreign = enqueue_via_api(token_client(other_user), "save_message", data).json()
    make_job(user)
    probes = [
        ({"subject": Conversation.subject_for(theirs.pk)}, {"subject": "conversation:999999"}),
        ({"q": foreign["id"]}, {"q": "00000000-0000-4000-8000-000000000000"}),
        ({"q": foreign["request_id"]}, {"q": "no-such-request"}),
        ({"request_id": foreign["request_id"]}, {"request_id": "no-such-request"}),
        ({"user": other_user.username}, {"user": "nobody-at-all"}),
        ({"user": str(other_user.pk)}, {"user": "999999"}),
        ({"job_type": "save_message"}, {"job_type": "delete_conversation"}),
    ]
    for probe, nothing in probes:
        answer, baseline = api.get(JOBS, probe), api.get(JOBS, nothing)
        assert (answer.status_code, answer.json()) == (200, {**baseline.json()}), probe
        assert answer.json()["results"] == []


def test_the_list_takes_a_fixed_number_of_queries(api, user, django_assert_max_num_queries):
    for _ in range(20):
        make_job(user, "failed", "test_permanent")
    with django_assert_max_num_queries(6):
        assert len(api.get(JOBS).json()["results"]) == 20


def test_anonymous_gets_401(client):
    assert client.get(JOBS).status_code == 401
