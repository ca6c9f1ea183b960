"""The queue dashboard in a real browser (headless Chromium) against a real cluster."""

import shutil
import tempfile

import pytest
import requests

from queues.models import Job
from queues.services import enqueue
from tests.conftest import token_client
from tests.support.cluster import wait_for

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
        "--window-size=1400,1200",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_an_operator_sees_the_numbers_of_the_api_and_retries_a_failed_job(
    browser, live_server, cluster, client, user, operator_user, tmp_path
):
    from selenium.webdriver.common.by import By

    cluster.start()
    for _ in range(3):
        enqueue("database", "test_sleep", {"user_id": user.pk})
    failing = enqueue("database", "test_fails_once", {"user_id": user.pk})
    wait_for(lambda: not Job.objects.exclude(status__in=Job.FINISHED).exists(), 30, message="jobs")
    assert Job.objects.get(pk=failing.pk).status == "failed"

    client.force_login(operator_user)
    browser.get(f"{live_server.url}/healthz")
    browser.add_cookie({"name": "sessionid", "value": client.cookies["sessionid"].value})
    browser.get(f"{live_server.url}/dashboard/queues")

    card = browser.find_element(By.CSS_SELECTOR, 'section[data-queue="database"]')
    shown = {
        name: card.find_element(By.CSS_SELECTOR, f'[data-stat="{name}"]').text
        for name in ("waiting", "running", "succeeded", "failed", "live_clusters")
    }
    api = token_client(operator_user).get("/api/queues/stats").json()["queues"]["database"]
    assert shown == {name: str(api[name]) for name in shown}
    assert shown["succeeded"] == "3" and shown["failed"] == "1"
    assert browser.find_elements(By.CSS_SELECTOR, "svg rect.ok")
    browser.save_screenshot(str(tmp_path / "dashboard.png"))

    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{failing.pk}"]')
    row.find_element(By.CSS_SELECTOR, "button.retry").click()
    wait_for(lambda: "sent back to its queue" in browser.page_source, 10, message="retry message")
    retried = wait_for(
        lambda: (job := Job.objects.get(pk=failing.pk)).status == "succeeded" and job,
        30,
        message="the retried job to run",
    )
    assert (retried.attempts, retried.retried_by) == (2, operator_user)

    browser.get(f"{live_server.url}/dashboard/queues")
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{failing.pk}"]')
    card = browser.find_element(By.CSS_SELECTOR, 'section[data-queue="database"]')
    assert card.find_element(By.CSS_SELECTOR, '[data-stat="succeeded"]').text == "4"
    browser.save_screenshot(str(tmp_path / "dashboard-after-retry.png"))
    shutil.copy(tmp_path / "dashboard.png", "/tmp/slimy-dashboard.png")
    assert requests.get(f"{live_server.url}/dashboard/queues", timeout=10).url.endswith(
        "/admin/login/?next=/dashboard/queues"
    )
