"""The queue dashboard's numbers: each says its window and agrees with the lists beside it."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from queues.api import enqueue
from queues.execution.runner import run_job
from queues.models import Job
from queues.web.dashboard import LISTED, MINUTES, minute_chart, nice_ticks

pytestmark = pytest.mark.django_db


def stat(page, name):
    return re.search(rf'data-stat="{name}">([^<]*)<', page).group(1)


def rows(page, kind):
    return re.findall(rf'<tr {kind}="([^"]+)"', page)


def test_after_a_failure_and_a_retry_the_numbers_agree_with_the_lists(client, user, operator_user):
    client.force_login(operator_user)
    for _ in range(2):
        run_job(enqueue("test_sleep", {"user_id": user.pk}).pk)
    backoff = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 5})
    run_job(backoff.pk)
    failing = enqueue("test_fails_once", {"user_id": user.pk})
    run_job(failing.pk)

    page = client.get("/dashboard/queues").content.decode()
    assert (stat(page, "failed"), rows(page, "data-job")) == ("1", [str(failing.pk)])
    assert 'Failed jobs <span class="count">(1:' in page
    assert (stat(page, "retrying"), rows(page, "data-retrying-job")) == ("1", [str(backoff.pk)])
    assert stat(page, "running") == "0" and not rows(page, "data-running-job")
    assert stat(page, "waiting") == "1"  # the job in its backoff
    assert stat(page, "succeeded_last_hour") == "2"
    assert stat(page, "failed_attempts_last_hour") == "2"  # the backoff's and the final one
    assert stat(page, "attempt_success_last_hour") == "50%"
    assert (stat(page, "succeeded_total"), stat(page, "failed_total")) == ("2", "1")

    retried = client.post(f"/dashboard/queues/jobs/{failing.pk}/retry", follow=True)
    assert "sent back to its queue" in retried.content.decode()
    run_job(failing.pk)
    assert Job.objects.get(pk=failing.pk).status == "succeeded"

    page = client.get("/dashboard/queues").content.decode()
    assert (stat(page, "failed"), rows(page, "data-job")) == ("0", [])
    assert "No failed job" in page
    assert stat(page, "succeeded_last_hour") == "3"
    assert stat(page, "failed_attempts_last_hour") == "2"  # attempts stay failed
    assert stat(page, "attempt_success_last_hour") == "60%"
    # All time counts the failure that happened, and says so.
    assert (stat(page, "succeeded_total"), stat(page, "failed_total")) == ("3", "1")
    assert "failed for good (counted even if retried since)" in page


def test_every_number_says_its_window_and_the_chart_its_times(client, operator_user):
    client.force_login(operator_user)
    now = timezone.now()
    page = client.get("/dashboard/queues").content.decode()

    windows = re.findall(r'data-window="([^"]+)"', page)
    assert windows == ["now", "last-hour", "all-time"]
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES - 1)
    assert f'Last 60 min <span class="muted">(since {start:%H:%M}, the chart' in page
    assert "All time: " in page and "Run time percentiles, all time" in page
    ticks = re.findall(r"<text [^>]*data-time-tick>([^<]*)<", page)
    assert len(ticks) == 6 and all(re.fullmatch(r"\d\d:\d0", tick) for tick in ticks)
    assert "Updated " in page and "Times are UTC." in page


def test_the_failed_count_is_every_failed_job_when_the_list_shows_the_newest(
    client, user, operator_user
):
    client.force_login(operator_user)
    jobs = [enqueue("test_permanent", {"user_id": user.pk}) for _ in range(LISTED + 1)]
    Job.objects.filter(pk__in=[job.pk for job in jobs]).update(
        status="failed", finished_at=timezone.now()
    )

    page = client.get("/dashboard/queues").content.decode()

    assert stat(page, "failed") == str(LISTED + 1)
    assert len(rows(page, "data-job")) == LISTED
    assert f"({LISTED + 1}: failed for good" in page and f"the newest {LISTED} shown" in page
    assert "/dashboard/queues/jobs?status=failed" in page


def test_the_throughput_chart_puts_each_minute_in_its_slot_on_a_round_scale():
    now = timezone.now().replace(minute=37, second=20)
    this_minute = now.replace(second=0, microsecond=0)
    per_minute = [
        {"minute": this_minute, "succeeded": 5, "failed": 2},
        {"minute": this_minute - timedelta(minutes=30), "succeeded": 1, "failed": 0},
        {"minute": this_minute - timedelta(minutes=MINUTES), "succeeded": 9, "failed": 9},
    ]

    chart = minute_chart(per_minute, now)

    assert (chart["succeeded"], chart["failed_attempts"]) == (6, 2)  # the hour's, no older
    assert [tick["label"] for tick in chart["y_ticks"]] == [0, 2, 4, 6, 8]
    bars = chart["bars"]
    assert len(bars) == MINUTES
    assert bars[-1]["ok_h"] > bars[-31]["ok_h"] >= 2 and bars[-1]["fail_h"] > 0
    assert not any(bar["ok_h"] or bar["fail_h"] for bar in bars[:-31])
    assert bars[-1]["fail_y"] + bars[-1]["fail_h"] == pytest.approx(bars[-1]["ok_y"])  # stacked
    hour_ago = now - timedelta(hours=1)
    assert [tick["label"] for tick in chart["x_ticks"]] == [
        f"{hour_ago:%H}:40",
        f"{hour_ago:%H}:50",
        *(f"{now:%H}:{tens}0" for tens in range(4)),
    ]
    assert chart["now_label"]  # no time label within 5 minutes of now


@pytest.mark.parametrize(
    ("peak", "ticks"),
    [(0, [0, 1]), (1, [0, 1]), (4, [0, 1, 2, 3, 4]), (7, [0, 2, 4, 6, 8]), (950, [0, 500, 1000])],
)
def test_the_count_axis_has_round_ticks_up_to_the_peak(peak, ticks):
    assert nice_ticks(peak) == ticks


def test_a_running_jobs_progress_is_shown_its_message_redacted_like_output(
    client, user, operator_user
):
    client.force_login(operator_user)
    plain = enqueue("test_progress", {"user_id": user.pk})
    task = enqueue(
        "django_task.database",
        {"task": "tests.support.tasks.add", "args": [1, 2], "kwargs": {}, "backend": "default"}
        | {"queue_name": "default", "priority": 0},
    )
    running = {"status": "running", "attempts": 1, "started_at": timezone.now(), "progress": 40}
    Job.objects.filter(pk=plain.pk).update(**running, progress_message="step 2 of 5")
    Job.objects.filter(pk=task.pk).update(**running, progress_message="mailing ann@example.com")

    page = client.get("/dashboard/queues").content.decode()

    assert sorted(rows(page, "data-running-job")) == sorted([str(plain.pk), str(task.pk)])
    assert page.count('<td class="progress">40%') == 2
    assert "step 2 of 5" in page  # the app's own type: its message is no content
    assert "ann@example.com" not in page and "[23 chars]" in page
