"""DRF's browsable API, with its session login, exists with DEBUG=1 only; production answers JSON.

Settings and URLs are read once per process, so the DEBUG side runs in a real gunicorn started
with DEBUG=1 against the test database; the production side is this (DEBUG off) process.
"""

import re

import pytest
import requests

from chat.models import Conversation, Message
from queues.api import enqueue

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_production_answers_json_to_a_browser_and_has_no_api_login(client, user):
    client.force_login(user)
    response = client.get("/api/chat/conversations", HTTP_ACCEPT=BROWSER_ACCEPT)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json()["results"] == []
    assert client.get("/api/auth/login/").status_code == 404
    assert client.get("/api/chat/conversations", HTTP_ACCEPT="text/html").status_code == 406


@pytest.mark.django_db(transaction=True)
def test_with_debug_a_browser_logs_in_and_clicks_through_the_browsable_api(web, user):
    conversation = Conversation.objects.create(owner=user, title="Browsable hello")
    Message.objects.create(conversation=conversation, role="user", content="hi there")
    job = enqueue("test_sleep", {"user_id": user.pk})
    server = web.start(workers=1, threads=2, extra_env={"DEBUG": "1"})
    browser = requests.Session()
    browser.headers["Accept"] = BROWSER_ACCEPT

    anonymous = browser.get(f"{server.url}/api/chat/conversations")
    assert anonymous.status_code == 401
    assert "text/html" in anonymous.headers["Content-Type"]
    login_page = browser.get(f"{server.url}/api/auth/login/")
    assert login_page.status_code == 200
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text).group(1)
    logged_in = browser.post(
        f"{server.url}/api/auth/login/",
        data={
            "username": user.username,
            "password": "pw-for-tests-123",
            "csrfmiddlewaretoken": csrf,
            "next": "/api/chat/conversations",
        },
        headers={"Referer": f"{server.url}/api/auth/login/"},
    )
    assert logged_in.status_code == 200
    assert logged_in.url == f"{server.url}/api/chat/conversations"

    pages = {
        "/api/chat/conversations": "Browsable hello",
        f"/api/chat/conversations/{conversation.pk}": "Browsable hello",
        f"/api/chat/conversations/{conversation.pk}/messages": "hi there",
        f"/api/queues/jobs/{job.pk}": "test_sleep",
    }
    for path, shown in pages.items():
        page = browser.get(f"{server.url}{path}")
        assert page.status_code == 200, path
        assert "text/html" in page.headers["Content-Type"], path
        assert "Django REST framework" in page.text and shown in page.text, path
        assert 'action="/api/auth/logout/' in page.text and user.username in page.text, path

    # The page's raw-data form posts JSON with the session's CSRF token, as its script does.
    created = browser.post(
        f"{server.url}/api/chat/conversations",
        json={"title": "From the browser"},
        headers={"X-CSRFToken": browser.cookies["csrftoken"], "Referer": server.url},
    )
    assert created.status_code == 201 and "From the browser" in created.text
    # A client asking for JSON still gets JSON.
    as_json = browser.get(
        f"{server.url}/api/chat/conversations", headers={"Accept": "application/json"}
    )
    assert [c["title"] for c in as_json.json()["results"]] == [
        "From the browser",
        "Browsable hello",
    ]
