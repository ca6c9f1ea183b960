"""`manage.py demo_failing_job`: a real job type that shows the failure path end to end."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from queues.core.services import retry_jobs
from queues.execution.runner import run_job
from queues.extras.demo_job import DEMO_FAILING_JOB
from queues.models import Job

pytestmark = pytest.mark.django_db


def test_it_enqueues_the_demo_job_for_the_demo_user_and_says_what_will_happen(make_user):
    demo = make_user("demo")
    out, err = StringIO(), StringIO()
    call_command("demo_failing_job", stdout=out, stderr=err)

    job = Job.objects.get()
    assert (job.job_type, job.user, job.status, job.max_attempts) == (
        DEMO_FAILING_JOB,
        demo,
        "queued",
        3,
    )
    assert f"Enqueued demo job {job.pk}" in out.getvalue()
    assert "It fails 3 attempts (waiting 10 s, then 20 s between them)" in out.getvalue()
    assert f"/admin/queues/job/{job.pk}/change/" in out.getvalue()
    assert "No worker seen in the last 30 s" in err.getvalue()


def test_it_needs_the_user_to_exist():
    with pytest.raises(CommandError, match=r"run `manage\.py demo_user` first"):
        call_command("demo_failing_job", "--username", "nobody")
    assert not Job.objects.exists()


def test_following_it_shows_backoff_final_failure_operator_retry_and_success(
    make_user, staff_user, settings, monkeypatch
):
    """Each poll of `--follow` lets the next thing happen: three attempts, a retry, a success."""
    make_user("demo")
    settings.JOB_RETRY_POLICIES = {DEMO_FAILING_JOB: {"backoff_seconds": 0}}

    def attempt():
        run_job(Job.objects.get().pk)

    steps = [attempt, attempt, attempt, lambda: retry_jobs(Job.objects.all(), by=staff_user)]
    steps.append(attempt)
    monkeypatch.setattr(
        "queues.management.commands.demo_failing_job.sleep", lambda seconds: steps.pop(0)()
    )
    out = StringIO()
    call_command("demo_failing_job", "--follow", stdout=out, stderr=StringIO())

    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()[5:]]
    outage = "DemoOutage: simulated outage (demo) on attempt {} of 3"
    assert lines[0] == "queued, waiting for a worker"
    assert lines[1].startswith(f"attempt 1/3 failed ({outage.format(1)}")
    assert "retrying in 0 s" in lines[1]
    assert lines[2].startswith(f"attempt 2/3 failed ({outage.format(2)}")
    assert lines[3].startswith("failed for good after 3/3 attempts (DemoOutage). Retry it")
    assert lines[4] == "queued again by staff: attempts 3/6, the next one succeeds"
    assert lines[5].startswith("succeeded on attempt 4: ")
    assert len(lines) == 6 and not steps
    final = Job.objects.get()
    assert (final.status, final.attempts, final.retried_by) == ("succeeded", 4, staff_user)
    assert final.result["demo"] == "succeeded after an operator's retry"


def test_the_dashboard_shows_the_demo_job_in_its_backoff(client, make_user):
    demo = make_user("demo")
    call_command("demo_failing_job", stdout=StringIO(), stderr=StringIO())
    call_command("queue_operator", stdout=StringIO())
    job = Job.objects.get(user=demo)
    run_job(job.pk)

    client.login(username="operator", password="operator-password")
    page = client.get("/dashboard/queues").content.decode()

    row = page[page.index(f'data-retrying-job="{job.pk}"') :].split("</tr>")[0]
    assert DEMO_FAILING_JOB in row and "1/3" in row
    assert "DemoOutage: simulated outage (demo) on attempt 1 of 3" in row
    assert "(in 10 s)" in row or "(in 9 s)" in row
