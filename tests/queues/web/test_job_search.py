"""The dashboard's Jobs page over HTTP: search filters, pages, permissions, bad input and the
bulk actions (`queues.web.bulk_actions`)."""

import re
import threading
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone

from chat.models import Conversation
from queues.api import enqueue
from queues.core.services import delete_finished_jobs, retry_jobs
from queues.models import Job
from queues.web import dashboard_jobs
from tests.support.threads import in_a_thread
from tests.support.users import grant

pytestmark = pytest.mark.django_db

JOBS, BULK = "/dashboard/queues/jobs", "/dashboard/queues/jobs/bulk"
NOW = timezone.now().replace(microsecond=0)


def make_job(user, status="succeeded", job_type="test_sleep", *, age=timedelta(0), **fields):
    """A job enqueued `age` ago that has reached `status` (finished a second later if finished)."""
    job = enqueue(job_type, {"user_id": user.pk})
    created = NOW - age
    finished = created + timedelta(seconds=1) if status in Job.FINISHED else None
    Job.objects.filter(pk=job.pk).update(
        status=status, created_at=created, finished_at=finished, **fields
    )
    return Job.objects.get(pk=job.pk)


def signed_in(user, **options):
    client = Client(**options)
    client.force_login(user)
    return client


def found(response):
    """The ids of the jobs a Jobs page lists, in order."""
    return re.findall(r'data-found-job="([0-9a-f-]+)"', response.content.decode())


def ids(*jobs):
    return [str(job.pk) for job in jobs]


@pytest.fixture
def operator(operator_user):
    return signed_in(operator_user)


def test_each_filter_finds_exactly_the_jobs_it_names(operator, user, other_user):
    old_failed = make_job(user, "failed", "test_permanent", age=timedelta(days=3))
    failed = make_job(user, "failed", "test_permanent", age=timedelta(hours=2))
    running = make_job(other_user, "running", age=timedelta(hours=1), subject="conversation:7")
    queued = make_job(other_user, "queued", "test_flaky", subject="conversation:7")
    newest_first = [queued, running, failed, old_failed]

    def search(**query):
        response = operator.get(JOBS, query)
        assert response.status_code == 200, response.content
        return found(response)

    assert search() == ids(*newest_first)
    assert search(job_id=str(failed.pk)) == ids(failed)
    assert search(job_type="test_permanent") == ids(failed, old_failed)
    assert search(status="running") == ids(running)
    assert search(job_type="test_permanent", status="failed") == ids(failed, old_failed)
    assert search(user=other_user.username) == ids(queued, running)
    assert search(user=str(user.pk)) == ids(failed, old_failed)
    assert search(user="nobody-of-that-name") == []
    assert search(subject="conversation:7") == ids(queued, running)
    day_ago = (NOW - timedelta(days=1)).isoformat()
    assert search(created_after=day_ago) == ids(queued, running, failed)
    assert search(created_before=day_ago) == ids(old_failed)
    three_hours_ago = NOW - timedelta(hours=3)
    assert search(
        finished_after=three_hours_ago.isoformat(),
        finished_before=NOW.strftime("%Y-%m-%dT%H:%M"),  # as a datetime-local input sends it
    ) == ids(failed)
    assert search(status="failed", created_after=day_ago, user=user.username) == ids(failed)


def test_pages_have_a_constant_size_and_walk_every_job_once_both_ways(operator, user):
    # Ties on created_at are broken by id, so no job is skipped or shown twice across pages.
    jobs = [make_job(user, age=timedelta(seconds=i // 3)) for i in range(120)]
    pages, urls = [], [JOBS + "?status=succeeded"]
    while True:
        page = operator.get(urls[-1])
        assert page.status_code == 200
        pages.append(found(page))
        if not (older := link(page, "older")):
            break
        urls.append(JOBS + older)
    assert [len(p) for p in pages] == [50, 50, 20]
    walked = [job for page in pages for job in page]
    newest_first = sorted(jobs, key=lambda j: (j.created_at, str(j.pk)), reverse=True)
    assert walked == ids(*newest_first) and len(set(walked)) == 120

    back = operator.get(JOBS + link(operator.get(urls[-1]), "newer"))
    assert found(back) == pages[1]
    first = operator.get(JOBS + link(back, "newer"))
    assert found(first) == pages[0] and link(first, "newer") is None


def link(response, name):
    """The href of the page's Newer or Older link, or None."""
    match = re.search(rf'href="([^"]*)" class="{name}"', response.content.decode())
    return match and match.group(1).replace("&amp;", "&")


@pytest.mark.parametrize(
    "query, message",
    [
        ({"job_id": "not-a-uuid"}, "Enter a valid UUID."),
        ({"status": "exploded"}, "Select a valid choice. exploded is not one of"),
        ({"job_type": "no_such_type"}, "Select a valid choice. no_such_type is not one of"),
        ({"created_after": "yesterday"}, "Enter a valid date/time."),
        (
            {"finished_after": "2026-11-02T00:00", "finished_before": "2026-11-01T00:00"},
            "Must not be before",
        ),
        ({"created_after": "2026-11-02", "created_before": "2026-11-01"}, "Must not be before"),
        ({"older_than": "garbage"}, "Not a page of this list"),
        ({"older_than": "0001-01-01T00:00:00+14:00_" + "0" * 32}, "Not a page of this list"),
        ({"user": "x" * 151}, "Ensure this value has at most 150 characters"),
        ({"created_after": "0001-01-01T00:10+05:00"}, "Not a time the database can hold"),
        (
            {
                "older_than": f"{NOW.isoformat()}_{'0' * 32}",
                "newer_than": f"{NOW.isoformat()}_{'0' * 32}",
            },
            "either older or newer",
        ),
    ],
)
def test_bad_search_input_is_a_clear_error_on_the_page(operator, user, query, message):
    make_job(user)
    response = operator.get(JOBS, query)
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page.replace("&quot;", '"').replace("&#x27;", "'")
    assert found(response) == []


def test_a_time_with_an_offset_postgresql_refuses_is_searched_in_utc(operator, user):
    make_job(user)
    response = operator.get(JOBS, {"finished_before": "0244-01-04T05:10:58+21:44"})
    assert response.status_code == 200 and found(response) == []


def test_a_page_whose_jobs_are_gone_is_empty_not_an_error(operator, user):
    make_job(user)
    before_everything = f"{(NOW - timedelta(days=1)).isoformat()}_{'0' * 32}"
    for position in ("older_than", "newer_than"):
        far = before_everything if position == "older_than" else f"{NOW.isoformat()}_{'f' * 32}"
        response = operator.get(JOBS, {position: far})
        assert response.status_code == 200 and found(response) == []
        assert 'No job here any more: <a href="?">back to the newest' in response.content.decode()


def test_a_huge_user_id_matches_nobody(operator, user):
    make_job(user)
    response = operator.get(JOBS, {"user": "9" * 40})
    assert response.status_code == 200 and found(response) == []


def test_without_view_job_you_find_your_own_jobs_only(user, make_user):
    me = make_user("staffer", is_staff=True)
    mine, theirs = make_job(me), make_job(user)
    client = signed_in(me)
    assert found(client.get(JOBS)) == ids(mine)
    assert found(client.get(JOBS, {"job_id": str(theirs.pk)})) == []
    assert found(client.get(JOBS, {"user": user.username})) == []


def test_anonymous_and_non_staff_users_are_sent_to_the_admin_login(client, user):
    job = make_job(user, "failed")
    for c in (client, signed_in(user)):
        assert c.get(JOBS).url.startswith("/admin/login/")
        retry = c.post(BULK, {"action": "retry", "scope": "selected", "job": [job.pk]})
        assert retry.status_code == 302 and retry.url.startswith("/admin/login/")
    assert Job.objects.get(pk=job.pk).status == "failed"


def test_content_fields_are_redacted_for_everyone_but_the_owner(operator, make_user):
    owner = grant(make_user("writer", is_staff=True))
    conversation = Conversation.objects.create(owner=owner, title="t")
    data = {"conversation_id": conversation.pk, "role": "user", "content": "secret words"}
    enqueue("save_message", {**data, "user_id": owner.pk})
    shown = operator.get(JOBS).content.decode()
    assert "[12 chars]" in shown and "secret words" not in shown
    assert "secret words" in signed_in(owner).get(JOBS).content.decode()


def buttons(page):
    return set(re.findall(r'<option value="(\w+)">', page)) & {"retry", "cancel", "delete"}


def test_each_bulk_action_needs_its_permission_and_is_shown_only_to_holders(user, make_user):
    failed = make_job(user, "failed")
    viewer = signed_in(grant(make_user("viewer", is_staff=True), "view_job"))
    changer = signed_in(grant(make_user("changer", is_staff=True), "view_job", "change_job"))
    deleter = signed_in(grant(make_user("deleter", is_staff=True), "view_job", "delete_job"))
    selected = {"scope": "selected", "job": [failed.pk]}

    page = viewer.get(JOBS).content.decode()
    assert found(viewer.get(JOBS)) == ids(failed)
    assert buttons(page) == set() and 'name="job"' not in page and "apply-selected" not in page
    assert buttons(changer.get(JOBS).content.decode()) == {"retry", "cancel"}
    assert buttons(deleter.get(JOBS).content.decode()) == {"delete"}

    for client, action in [(viewer, "retry"), (viewer, "delete"), (changer, "delete")]:
        assert client.post(BULK, {**selected, "action": action}).status_code == 403
    assert deleter.post(BULK, {**selected, "action": "retry"}).status_code == 403
    assert deleter.post(BULK, {**selected, "action": "cancel"}).status_code == 403
    assert viewer.post(BULK, {**selected, "action": "nonsense"}).status_code == 403
    assert Job.objects.get(pk=failed.pk).status == "failed"

    done = deleter.post(BULK, {**selected, "action": "delete"}, follow=True)
    assert "1 finished job record(s) deleted." in done.content.decode()
    assert not Job.objects.filter(pk=failed.pk).exists()


def test_bulk_actions_are_csrf_protected(operator_user, user):
    job = make_job(user, "failed")
    client = signed_in(operator_user, enforce_csrf_checks=True)
    response = client.post(BULK, {"action": "retry", "scope": "selected", "job": [job.pk]})
    assert response.status_code == 403
    assert Job.objects.get(pk=job.pk).status == "failed"
    page = client.get(JOBS).content.decode()
    assert 'name="csrfmiddlewaretoken"' in page


def test_retrying_selected_jobs_retries_the_failed_ones_and_says_what_was_left(
    operator, operator_user, user
):
    first, second, unselected = (make_job(user, "failed", "test_permanent") for _ in range(3))
    succeeded = make_job(user)
    chosen = [first.pk, second.pk, succeeded.pk]
    response = operator.post(
        BULK,
        {"action": "retry", "scope": "selected", "job": chosen, "user": user.username},
        follow=True,
    )
    page = response.content.decode()
    assert response.redirect_chain[-1][0] == f"{JOBS}?user={user.username}"
    assert "2 failed job(s) sent back to their queue." in page
    assert "1 job(s) it does not apply to were left alone." in page
    for job in (first, second):
        job.refresh_from_db()
        assert (job.status, job.retried_by) == ("queued", operator_user)
    assert Job.objects.get(pk=unselected.pk).status == "failed"
    assert Job.objects.get(pk=succeeded.pk).status == "succeeded"


def test_cancelling_selected_jobs_withdraws_the_waiting_ones_and_records_who(
    operator, operator_user, user
):
    queued, retrying = make_job(user, "queued"), make_job(user, "retrying")
    finished = make_job(user)
    response = operator.post(
        BULK,
        {"action": "cancel", "scope": "selected", "job": [queued.pk, retrying.pk, finished.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "2 job(s) cancelled or asked to stop." in page
    assert "1 job(s) it does not apply to were left alone." in page
    for job in (queued, retrying):
        job.refresh_from_db()
        assert (job.status, job.cancel_requested_by) == ("cancelled", operator_user)
        assert list(job.events.values_list("action", "by")) == [("cancelled", operator_user.pk)]
    assert Job.objects.get(pk=finished.pk).status == "succeeded"


def test_an_action_on_all_matching_jobs_touches_only_what_the_search_finds(operator, user):
    permanent = [make_job(user, "failed", "test_permanent") for _ in range(3)]
    flaky = make_job(user, "failed", "test_flaky")
    response = operator.post(
        BULK,
        {"action": "retry", "scope": "matching", "job_type": "test_permanent", "status": "failed"},
        follow=True,
    )
    assert "3 failed job(s) sent back to their queue." in response.content.decode()
    assert {j.status for j in Job.objects.filter(pk__in=[j.pk for j in permanent])} == {"queued"}
    assert Job.objects.get(pk=flaky.pk).status == "failed"


def test_one_request_changes_at_most_bulk_limit_jobs_and_says_how_many_remain(
    operator, user, monkeypatch
):
    monkeypatch.setattr(dashboard_jobs, "BULK_LIMIT", 2)
    jobs = [make_job(user, "failed", age=timedelta(minutes=i)) for i in range(5)]
    page = operator.post(BULK, {"action": "retry", "scope": "matching"}, follow=True)
    assert "2 failed job(s) sent back" in page.content.decode()
    assert "3 more matching job(s): apply again" in page.content.decode()
    assert [Job.objects.get(pk=j.pk).status for j in jobs] == ["queued"] * 2 + ["failed"] * 3


def test_deleting_all_matching_jobs_never_deletes_a_live_one(user, make_user):
    deleter = signed_in(grant(make_user("deleter", is_staff=True), "view_job", "delete_job"))
    live = [make_job(user, status) for status in Job.LIVE]
    finished = [make_job(user, status) for status in Job.FINISHED]
    response = deleter.post(BULK, {"action": "delete", "scope": "matching"}, follow=True)
    page = response.content.decode()
    assert "3 finished job record(s) deleted." in page
    assert "3 job(s) it does not apply to were left alone." in page
    assert set(Job.objects.values_list("pk", flat=True)) == {j.pk for j in live}
    assert not Job.objects.filter(pk__in=[j.pk for j in finished]).exists()


def test_the_delete_service_itself_skips_live_jobs(user):
    live = [make_job(user, status) for status in Job.LIVE]
    [make_job(user, status) for status in Job.FINISHED]
    assert delete_finished_jobs(Job.objects.all()) == 3
    assert set(Job.objects.values_list("pk", flat=True)) == {j.pk for j in live}


def test_selected_jobs_you_may_not_see_are_not_found(user, make_user):
    """Without view_job, another user's job id behaves like a missing one: nothing happens."""
    staffer = grant(make_user("staffer", is_staff=True), "change_job", "delete_job")
    mine, theirs = make_job(staffer, "failed"), make_job(user, "failed")
    client = signed_in(staffer)
    selected = {"scope": "selected", "job": [mine.pk, theirs.pk]}
    page = client.post(BULK, {**selected, "action": "retry"}, follow=True).content.decode()
    assert "1 failed job(s) sent back" in page
    page = client.post(BULK, {**selected, "action": "delete"}, follow=True).content.decode()
    assert "0 finished job record(s) deleted." in page
    assert Job.objects.get(pk=theirs.pk).status == "failed"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"scope": "selected"}, "Select at least one job"),
        ({"scope": "selected", "job": ["not-a-uuid"]}, "is not a job id"),
        ({"scope": "everything", "job": ["{job}"]}, "Select a valid choice. everything"),
        (
            {"action": "explode", "scope": "selected", "job": ["{job}"]},
            "Select a valid choice. explode",
        ),
        ({"scope": "matching", "status": "exploded"}, "Select a valid choice. exploded"),
        (
            {"scope": "matching", "created_after": "2026-11-02", "created_before": "2026-11-01"},
            "Must not be before",
        ),
    ],
)
def test_bad_bulk_input_is_a_clear_error_on_the_page_and_changes_nothing(
    operator, user, body, message
):
    job = make_job(user, "failed")
    body = {"action": "retry", **body}
    body["job"] = [j.replace("{job}", str(job.pk)) for j in body.get("job", [])]
    response = operator.post(BULK, body)
    assert response.status_code == 400
    assert message in response.content.decode().replace("&quot;", '"')
    assert Job.objects.get(pk=job.pk).status == "failed"


def test_too_many_selected_jobs_is_an_error(operator, user, monkeypatch):
    monkeypatch.setattr("queues.web.forms.BULK_LIMIT", 1)
    jobs = [make_job(user, "failed") for _ in range(2)]
    body = {"action": "retry", "scope": "selected", "job": [j.pk for j in jobs]}
    response = operator.post(BULK, body)
    assert (
        response.status_code == 400
        and "Select at most 1 jobs at once." in response.content.decode()
    )
    assert set(Job.objects.values_list("status", flat=True)) == {"failed"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_deletion_waiting_on_a_retry_leaves_the_retried_job_alone(user):
    """Bulk delete and an operator's retry of the same failed job, at once: the retry wins."""
    job = make_job(user, "failed")
    retried, deleting = threading.Event(), threading.Event()

    def delete():
        retried.wait(10)
        deleting.set()
        return delete_finished_jobs(Job.objects.filter(pk=job.pk))

    deleted = in_a_thread(delete)
    with transaction.atomic():
        assert retry_jobs(Job.objects.filter(pk=job.pk)) == 1  # holds the job's row lock
        retried.set()
        deleting.wait(10)
        deleted.thread.join(0.5)  # the deletion now waits on the lock
        assert deleted.thread.is_alive()
    assert deleted() == 0
    assert Job.objects.get(pk=job.pk).status == "queued"


def test_the_admin_deletes_a_finished_job_record_only(user, make_user):
    deleter = signed_in(grant(make_user("deleter", is_staff=True), "view_job", "delete_job"))
    live, finished = make_job(user, "queued"), make_job(user, "failed")
    confirm = {"post": "yes"}
    assert deleter.post(f"/admin/queues/job/{live.pk}/delete/", confirm).status_code == 403
    assert deleter.post(f"/admin/queues/job/{finished.pk}/delete/", confirm).status_code == 302
    assert list(Job.objects.values_list("pk", flat=True)) == [live.pk]
    page = deleter.get("/admin/queues/job/").content.decode()
    assert 'value="delete_selected"' not in page
