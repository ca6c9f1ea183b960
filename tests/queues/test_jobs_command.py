"""`manage.py jobs list|show|cancel|retry|enqueue`: the API's filters and the services' actions
from a shell."""

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from chat.models import Conversation
from queues.api import enqueue
from queues.models import Job, JobEvent
from tests.support import cluster
from tests.support.users import grant

pytestmark = pytest.mark.django_db


def jobs(*args):
    """`manage.py jobs ARGS` in process: its standard output."""
    out = StringIO()
    call_command("jobs", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def listed(*args):
    return [job["id"] for job in json.loads(jobs("list", "--json", *args))]


def make_job(user, status, job_type="test_sleep", age=timedelta(0), **fields):
    job = enqueue(job_type, {"user_id": user.pk})
    finished = timezone.now() if status in Job.FINISHED else None
    Job.objects.filter(pk=job.pk).update(
        status=status, created_at=timezone.now() - age, finished_at=finished, **fields
    )
    return str(job.pk)


def test_list_takes_the_apis_filters(user, other_user):
    failed = make_job(user, "failed", "test_permanent", age=timedelta(minutes=3))
    cancelled = make_job(other_user, "cancelled", age=timedelta(minutes=2))
    queued = make_job(other_user, "queued", subject="thing:1")
    assert listed() == [queued, cancelled, failed]
    assert listed("--status", "failed,cancelled") == [cancelled, failed]
    assert listed("--status", "failed", "--status", "queued") == [queued, failed]
    assert listed("--type", "test_permanent") == [failed]
    assert listed("--user", other_user.username, "--subject", "thing:1") == [queued]
    assert listed("--search", failed) == [failed]
    assert listed("--limit", "1") == [queued]
    assert listed("--by", user.username) == [failed]  # as Alice: her own jobs only

    table = jobs("list", "--status", "queued").splitlines()
    assert table[0].split()[:4] == ["id", "queue", "type", "status"]
    assert table[1].split()[:5] == [queued, "database", "test_sleep", "queued", "0/3"]
    assert table[1].endswith("thing:1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "finished"], "--status: Select a valid choice"),
        (["--type", "no_such_type"], "--type: Select a valid choice"),
        (["--queue", "elsewhere"], "--queue: Select a valid choice"),
        (["--created-after", "yesterday"], "--created-after: Enter a valid date/time"),
        (["--by", "nobody"], "--by: no user 'nobody'"),
        (["--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_a_bad_filter_is_an_error_naming_its_option(args, message):
    with pytest.raises(CommandError, match=message):
        jobs("list", *args)


def test_list_and_show_redact_content_unless_read_as_its_owner(user, operator_user):
    conversation = Conversation.objects.create(owner=user, title="Mine")
    data = {"user_id": user.pk, "conversation_id": conversation.pk, "role": "user"}
    job = enqueue("save_message", {**data, "content": "secret words"})
    (shown,) = json.loads(jobs("list", "--json"))
    assert shown["data"]["content"] == "[12 chars]"
    assert json.loads(jobs("show", str(job.pk), "--json"))["data"]["content"] == "[12 chars]"
    assert "secret" not in jobs("show", str(job.pk))
    as_operator = json.loads(jobs("show", str(job.pk), "--json", "--by", operator_user.username))
    assert as_operator["data"]["content"] == "[12 chars]"
    as_owner = json.loads(jobs("show", str(job.pk), "--json", "--by", user.username))
    assert as_owner["data"]["content"] == "secret words"


def test_show_prints_the_record_its_traceback_and_history(failed_job, operator_user):
    jobs("retry", str(failed_job.pk), "--by", operator_user.username)
    shown = jobs("show", str(failed_job.pk))
    assert f"id:                  {failed_job.pk}" in shown
    assert "status:              queued" in shown
    assert "history:" in shown and "retried by operator manage.py jobs retry" in shown
    with pytest.raises(CommandError, match="no job"):
        jobs("show", "00000000-0000-4000-8000-000000000000")
    with pytest.raises(CommandError, match="is not a job id"):
        jobs("show", "nope")


def test_cancel_and_retry_go_through_the_services_and_record_who(user, operator_user):
    waiting = enqueue("test_sleep", {"user_id": user.pk})
    assert (
        jobs("cancel", str(waiting.pk), "--by", operator_user.username)
        == "1 cancelled, 0 asked to stop\n"
    )
    event = JobEvent.objects.get(job_id=waiting.pk)
    assert (event.action, event.by) == ("cancelled", operator_user)
    assert event.detail.startswith("manage.py jobs cancel")
    assert Job.objects.get(pk=waiting.pk).status == "cancelled"

    failed = [make_job(user, "failed", "test_permanent") for _ in range(2)]
    out = json.loads(jobs("retry", "--status", "failed", "--type", "test_permanent", "--json"))
    assert out == {"retried": 2}
    events = JobEvent.objects.filter(job_id__in=failed, action="retried")
    assert [(e.by, e.detail[:22]) for e in events] == [(None, "manage.py jobs retry, ")] * 2


def test_cancel_and_retry_want_a_choice_of_jobs_and_an_operator_who_may(user, make_user):
    enqueue("test_sleep", {"user_id": user.pk})
    with pytest.raises(CommandError, match="give job ids, filters, or --all"):
        jobs("cancel")
    viewer = grant(make_user("viewer"), "view_job")
    with pytest.raises(CommandError, match=r"lacks queues\.change_job"):
        jobs("cancel", "--all", "--by", viewer.username)
    assert Job.objects.get().status == "queued"
    assert jobs("cancel", "--all") == "1 cancelled, 0 asked to stop\n"


def test_enqueue_validates_like_the_api(user):
    out = jobs("enqueue", "test_sleep", "--data", json.dumps({"user_id": user.pk, "seconds": 1}))
    job = Job.objects.get()
    assert out == f"{job.pk} test_sleep on database: enqueued\n"
    assert (job.data["seconds"], job.user_id) == (1, user.pk)
    later = json.loads(
        jobs(
            "enqueue",
            "test_sleep",
            "--data",
            f'{{"user_id": {user.pk}}}',
            "--delay",
            "60",
            "--priority",
            "3",
            "--json",
        )
    )
    assert later["priority"] == 3 and later["run_after"] > later["created_at"]
    for args, message in [
        (["no_such_type"], "unknown job type"),
        (["test_sleep", "--data", "{"], "--data is not JSON"),
        (["test_sleep", "--data", "[]"], "--data must be a JSON object"),
        (["test_sleep", "--data", '{"user_id": 999999}'], "user_id"),
        (["test_sleep", "--data", f'{{"user_id": {user.pk}, "seconds": -1}}'], "seconds"),
        (["test_sleep", "--data", f'{{"user_id": {user.pk}}}', "--priority", "10"], "priority"),
    ]:
        with pytest.raises(CommandError, match=message):
            jobs("enqueue", *args)
    assert Job.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_manage_py_jobs_runs_from_a_shell(user):
    """The command as an operator types it: exit status 0 and a table, 1 and the reason."""
    job = enqueue("test_sleep", {"user_id": user.pk})

    def jobs_command(*args):
        return cluster.manage("jobs", *args)

    listing = jobs_command("list")
    assert listing.returncode == 0, listing.stderr
    assert str(job.pk) in listing.stdout and "1 job(s)" in listing.stderr
    bad = jobs_command("list", "--status", "finished")
    assert bad.returncode == 1 and "--status: Select a valid choice" in bad.stderr
