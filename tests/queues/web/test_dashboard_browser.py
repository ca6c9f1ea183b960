"""The queue dashboard in a real browser (headless Chromium) against a real cluster."""

import re
import shutil
import tempfile
import time
from io import StringIO
from uuid import UUID

import pytest
import requests
from django.core.management import call_command

from queues.api import enqueue
from queues.extras.demo_job import DEMO_FAILING_JOB
from queues.models import Job, QueuePause
from tests.support.clients import token_client
from tests.support.cluster import wait_for
from tests.support.jobs import wait_for_job, wait_for_jobs

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    profile = tempfile.mkdtemp(prefix="slimy-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",  # a laptop's screen
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def now_and_last_hour(card):
    """The failed jobs now and the last hour's jobs succeeded and attempts failed, as shown."""
    from selenium.webdriver.common.by import By

    names = {
        "failed": "failed",
        "succeeded": "succeeded_last_hour",
        "failed_attempts": "failed_attempts_last_hour",
    }
    return {
        key: card.find_element(By.CSS_SELECTOR, f'[data-stat="{name}"]').text
        for key, name in names.items()
    }


def in_first_viewport(browser, element):
    """Whether `element` is shown whole on the page as it opens, without scrolling."""
    return browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return window.scrollY === 0 && r.top >= 0 && r.bottom <= window.innerHeight"
        " && r.right <= window.innerWidth;",
        element,
    )


def test_an_operator_sees_the_numbers_of_the_api_and_retries_a_failed_job(
    browser, live_server, cluster, client, user, operator_user, tmp_path
):
    from selenium.webdriver.common.by import By

    cluster.start()
    for _ in range(3):
        enqueue("test_sleep", {"user_id": user.pk})
    failing = enqueue("test_fails_once", {"user_id": user.pk})
    wait_for_jobs(timeout=30)
    assert Job.objects.get(pk=failing.pk).status == "failed"

    client.force_login(operator_user)
    browser.get(f"{live_server.url}/healthz")
    browser.add_cookie({"name": "sessionid", "value": client.cookies["sessionid"].value})
    browser.get(f"{live_server.url}/dashboard/queues")

    card = browser.find_element(By.CSS_SELECTOR, 'section[data-queue="database"]')
    shown = {
        name: card.find_element(By.CSS_SELECTOR, f'[data-stat="{name}"]').text
        for name in ("waiting", "live_clusters", "succeeded_total", "failed_total")
    }
    api = token_client(operator_user).get("/api/queues/stats").json()["queues"]["database"]
    assert shown == {name: str(api[name.removesuffix("_total")]) for name in shown}
    assert (shown["succeeded_total"], shown["failed_total"]) == ("3", "1")
    # Now: the failed jobs the list shows; the last hour: the chart's minutes.
    assert now_and_last_hour(card) == {"failed": "1", "succeeded": "3", "failed_attempts": "1"}
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr[data-job]")) == 1
    assert browser.find_elements(By.CSS_SELECTOR, "svg rect.ok")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg [data-time-tick]")) == 6
    for size in ((1400, 1000), (1920, 1080)):
        browser.set_window_size(*size)
        browser.get(f"{live_server.url}/dashboard/queues")
        retry = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{failing.pk}"] button.retry')
        assert in_first_viewport(browser, retry), size
        browser.save_screenshot(str(tmp_path / f"dashboard-{size[0]}.png"))
    browser.set_window_size(1400, 1000)

    browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{failing.pk}"] button.retry').click()
    wait_for(lambda: "sent back to its queue" in browser.page_source, 10, message="retry message")
    retried = wait_for_job(failing.pk, until="succeeded", timeout=30)
    assert (retried.attempts, retried.retried_by) == (2, operator_user)

    browser.get(f"{live_server.url}/dashboard/queues")
    assert not browser.find_elements(By.CSS_SELECTOR, "tr[data-job]")
    assert "No failed job." in browser.find_element(By.ID, "failed").text
    card = browser.find_element(By.CSS_SELECTOR, 'section[data-queue="database"]')
    assert now_and_last_hour(card) == {"failed": "0", "succeeded": "4", "failed_attempts": "1"}
    assert card.find_element(By.CSS_SELECTOR, '[data-stat="failed_total"]').text == "1"
    assert "failed for good (counted even if retried since)" in card.text
    browser.save_screenshot(str(tmp_path / "dashboard-after-retry.png"))
    shutil.copy(tmp_path / "dashboard-1400.png", "/tmp/slimy-dashboard.png")
    assert requests.get(f"{live_server.url}/dashboard/queues", timeout=10).url.endswith(
        "/admin/login/?next=/dashboard/queues"
    )


def test_the_operator_account_logs_in_watches_a_backoff_and_retries_on_dashboard_and_admin(
    browser, live_server, cluster, user, tmp_path
):
    """As `scripts/run`'s operator: staff in the operators' group, not a superuser."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    call_command("queue_operator", stdout=StringIO())
    cluster.start()
    from_dashboard, from_admin = (
        enqueue("test_fails_once", {"user_id": user.pk}) for _ in range(2)
    )
    demo = enqueue(DEMO_FAILING_JOB, {"user_id": user.pk})
    wait_for(
        lambda: (
            set(
                Job.objects.filter(pk__in=[from_dashboard.pk, from_admin.pk, demo.pk]).values_list(
                    "status", flat=True
                )
            )
            == {"failed", "retrying"}
        ),
        30,
        message="two failed jobs and the demo job in its backoff",
    )

    browser.get(f"{live_server.url}/dashboard/queues")
    assert "/admin/login/" in browser.current_url
    browser.find_element(By.ID, "id_username").send_keys("operator")
    browser.find_element(By.ID, "id_password").send_keys("operator-password")
    browser.find_element(By.CSS_SELECTOR, 'input[type="submit"]').click()
    # The URL changes before the page is parsed: wait for the row itself.
    (backoff,) = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-retrying-job="{demo.pk}"]'),
        10,
        message="the dashboard's row of the demo job",
    )
    assert browser.current_url.endswith("/dashboard/queues")
    assert DEMO_FAILING_JOB in backoff.text and "1/3" in backoff.text
    assert "DemoOutage" in backoff.text
    browser.save_screenshot(str(tmp_path / "operator-dashboard.png"))
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{from_dashboard.pk}"]')
    row.find_element(By.CSS_SELECTOR, "button.retry").click()
    wait_for(lambda: "sent back to its queue" in browser.page_source, 10, message="retry message")

    browser.find_element(By.LINK_TEXT, "All jobs").click()
    assert "Conversations" not in browser.page_source  # the operator sees jobs, not user data
    browser.get(f"{live_server.url}/admin/queues/job/?status__exact=failed")
    # At 1400 px the failed jobs' list fits: no sideways scroll, error and finish time in view.
    results = browser.find_element(By.CSS_SELECTOR, "#changelist .results")
    assert (
        browser.execute_script("return arguments[0].scrollWidth", results) <= results.size["width"]
    )
    row = browser.find_element(By.CSS_SELECTOR, f'tr:has(input[value="{from_admin.pk}"])')
    for column in ("field-finished", "field-error"):
        assert in_first_viewport(browser, row.find_element(By.CLASS_NAME, column)), column
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row.text)
    checkbox = f'input[name="_selected_action"][value="{from_admin.pk}"]'
    browser.find_element(By.CSS_SELECTOR, checkbox).click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("retry_selected")
    browser.find_element(By.CSS_SELECTOR, 'button[name="index"]').click()
    wait_for(
        lambda: "1 failed job(s) sent back to their queue." in browser.page_source,
        10,
        message="admin retry message",
    )
    assert "were not failed" not in browser.page_source
    browser.save_screenshot(str(tmp_path / "operator-admin-retry.png"))

    for job in (from_dashboard, from_admin):
        retried = wait_for_job(job.pk, until="succeeded", timeout=30)
        assert (retried.attempts, retried.retried_by.username) == (2, "operator")
        assert not retried.retried_by.is_superuser


def test_the_operator_pauses_a_queue_cancels_a_job_in_it_and_resumes_it_in_the_browser(
    browser, live_server, cluster, user, tmp_path
):
    """As `scripts/run`'s operator: the Pause button holds jobs back on a real cluster, Cancel
    withdraws one of them, Resume runs the rest; the job's admin page shows who cancelled it."""
    from selenium.webdriver.common.by import By

    call_command("queue_operator", stdout=StringIO())
    cluster.start()
    browser.get(f"{live_server.url}/dashboard/queues")
    browser.find_element(By.ID, "id_username").send_keys("operator")
    browser.find_element(By.ID, "id_password").send_keys("operator-password")
    browser.find_element(By.CSS_SELECTOR, 'input[type="submit"]').click()
    # The URL changes before the page is parsed: wait for the card itself.
    (card,) = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, 'section[data-queue="database"]'),
        10,
        message="the dashboard's queue card",
    )
    assert browser.current_url.endswith("/dashboard/queues")
    card.find_element(By.CSS_SELECTOR, "button.pause").click()
    (confirm,) = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "button.confirm-pause"),
        10,
        message="the pause's confirmation",
    )
    assert not QueuePause.objects.exists()  # asked, not yet paused
    confirm.click()
    wait_for(lambda: "Queue database paused" in browser.page_source, 10, message="paused")
    card = browser.find_element(By.CSS_SELECTOR, 'section[data-queue="database"]')
    assert card.find_element(By.CSS_SELECTOR, "[data-paused]").text == "paused"
    assert "by operator" in card.text
    kept, withdrawn = (enqueue("test_sleep", {"user_id": user.pk}) for _ in range(2))
    Job.objects.filter(pk=withdrawn.pk).update(status="retrying")  # listed with a Cancel button
    time.sleep(2)
    assert Job.objects.get(pk=kept.pk).status == "queued"  # the cluster starts nothing

    browser.get(f"{live_server.url}/dashboard/queues")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-retrying-job="{withdrawn.pk}"]')
    row.find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait_for(lambda: f"Job {withdrawn.pk} cancelled." in browser.page_source, 10, message="cancel")
    browser.save_screenshot(str(tmp_path / "dashboard-paused.png"))
    browser.find_element(By.CSS_SELECTOR, 'section[data-queue="database"] button.resume').click()
    wait_for(lambda: "Queue database resumed." in browser.page_source, 10, message="resumed")

    wait_for(lambda: Job.objects.get(pk=kept.pk).status == "succeeded", 10, message="the job")
    assert Job.objects.get(pk=withdrawn.pk).status == "cancelled"
    browser.get(f"{live_server.url}/admin/queues/job/{withdrawn.pk}/change/")
    history = browser.find_element(By.CSS_SELECTOR, "#events-group").text
    assert "cancelled" in history and "operator" in history


def test_an_operator_finds_failed_jobs_by_type_and_status_and_retries_the_ticked_ones(
    browser, live_server, cluster, client, user, operator_user, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    cluster.start()
    failing = [enqueue("test_fails_once", {"user_id": user.pk}) for _ in range(3)]
    other_type = enqueue("test_permanent", {"user_id": user.pk})
    enqueue("test_sleep", {"user_id": user.pk})
    wait_for(lambda: not Job.objects.exclude(status__in=Job.FINISHED).exists(), 30, message="jobs")

    client.force_login(operator_user)
    browser.get(f"{live_server.url}/healthz")
    browser.add_cookie({"name": "sessionid", "value": client.cookies["sessionid"].value})
    browser.get(f"{live_server.url}/dashboard/queues")
    browser.find_element(By.LINK_TEXT, "Find jobs").click()
    Select(browser.find_element(By.NAME, "job_type")).select_by_value("test_fails_once")
    Select(browser.find_element(By.NAME, "status")).select_by_value("failed")
    browser.find_element(By.CSS_SELECTOR, "button.search-button").click()

    def found():
        rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-found-job]")
        return [row.get_attribute("data-found-job") for row in rows]

    wait_for(lambda: "status=failed" in browser.current_url and found(), 10, message="the search")
    assert sorted(found()) == sorted(str(job.pk) for job in failing)
    actions = Select(browser.find_element(By.NAME, "action")).options
    assert [o.get_attribute("value") for o in actions] == ["retry", "cancel"]  # no Delete
    ticked = found()[:2]
    for job_id in ticked:
        browser.find_element(By.CSS_SELECTOR, f'input[name="job"][value="{job_id}"]').click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("retry")
    browser.find_element(By.CSS_SELECTOR, "button.apply-selected").click()
    wait_for(
        lambda: "2 failed job(s) sent back to their queue." in browser.page_source,
        10,
        message="the bulk retry's message",
    )
    browser.save_screenshot(str(tmp_path / "jobs-after-bulk-retry.png"))
    for job_id in ticked:
        retried = wait_for(
            lambda job_id=job_id: (j := Job.objects.get(pk=job_id)).status == "succeeded" and j,
            30,
            message="the retried job to run",
        )
        assert (retried.attempts, retried.retried_by) == (2, operator_user)
    untouched = {job.pk for job in failing} - {UUID(job_id) for job_id in ticked}
    assert {Job.objects.get(pk=pk).status for pk in untouched | {other_type.pk}} == {"failed"}

    browser.refresh()  # the same search, which now finds only the failed one left
    assert found() == [str(pk) for pk in untouched]
    shutil.copy(tmp_path / "jobs-after-bulk-retry.png", "/tmp/slimy-dashboard-jobs.png")
