"""Bad and hostile input gets a clear 4xx JSON error and stores nothing: bodies, fields, ids,
page numbers. (Who may do what: tests/queues/web/test_access.py.)"""

import json

import pytest

from chat.models import Conversation, Message
from queues.models import Job

pytestmark = pytest.mark.django_db

CONVERSATIONS = "/api/chat/conversations"


def _nothing_stored(conversation=None):
    """No job stored, and no conversation; or, given one, no message added to it."""
    assert Job.objects.count() == 0
    if conversation is None:
        assert Conversation.objects.count() == 0
    else:
        assert conversation.messages.count() == 3  # the three the fixture made


def test_a_body_over_the_size_limit_gets_a_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = api.post(CONVERSATIONS, {"title": "x" * 2000}, format="json")
    assert response.status_code == 413
    assert response.json()["error"] == "request_too_large"
    _nothing_stored()


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("text/plain", "title=hello"),
        ("application/x-www-form-urlencoded", "title=hello"),
        ("multipart/form-data; boundary=x", '--x\r\nContent-Disposition: form-data; name="title"'),
        ("application/xml", "<title>hello</title>"),
    ],
)
def test_bodies_that_are_not_json_get_a_415(api, content_type, body):
    response = api.generic("POST", CONVERSATIONS, body, content_type=content_type)
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    _nothing_stored()


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,  # deeper than the decoder's recursion limit
        '{"title": NaN}',
        '{"title": "a"',
        "{not json",
        b'{"title": "\xff\xfe"}',  # not UTF-8
    ],
    ids=["deeply-nested", "nan", "truncated", "not-json", "bad-utf8"],
)
def test_json_that_cannot_be_parsed_gets_a_400(api, body):
    response = api.generic("POST", CONVERSATIONS, body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "parse_error"
    _nothing_stored()


def test_deeply_nested_values_in_fields_get_a_400_naming_the_field(api):
    nested = "x"
    for _ in range(500):
        nested = {"a": nested}
    response = api.post(CONVERSATIONS, {"title": nested}, format="json")
    assert response.status_code == 400
    assert "title" in response.json()["fields"]
    job = api.post(
        "/api/queues/jobs",
        {"queue": "database", "type": "delete_conversation", "data": {"conversation_id": nested}},
        format="json",
    )
    assert job.status_code == 400
    _nothing_stored()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": "x" * 201},
        {"title": "\x1d" + "x" * 200},  # too long as sent, though trimmed it would fit
        {"title": "nul\x00byte"},
        {"title": "escape\x1b[31m"},
        {"title": "bell\x07"},
        {"title": "c1\x85control"},
        {"title": "lone\ud800surrogate"},
        {"title": "invoice\u202egpj.exe"},
        {"title": "isolate\u2067x\u2069"},
        {"title": "mark\u200f"},
    ],
)
def test_invalid_titles_get_a_400_naming_the_field(api, body):
    """Missing, empty, too long, control or bidi characters, lone surrogates."""
    raw = json.dumps(body)  # \ud800 travels as an escape, as a hostile client sends it
    response = api.generic("POST", CONVERSATIONS, raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    assert list(response.json()["fields"]) == ["title"]
    _nothing_stored()


@pytest.mark.parametrize(
    "content", ["nul\x00byte", "lone\udfffsurrogate", "esc\x1b", "override\u202dx"]
)
def test_message_content_with_control_or_bidi_characters_gets_a_400(api, conversation, content):
    body = json.dumps({"role": "user", "content": content})
    response = api.generic(
        "POST", f"{CONVERSATIONS}/{conversation.pk}/messages", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["content"]
    _nothing_stored(conversation)


def test_unicode_beyond_ascii_is_stored_as_sent(api, conversation):
    title = "Слизень 🐌 — 蛞蝓 שלום rtl"
    created = api.post(CONVERSATIONS, {"title": title}, format="json")
    assert created.status_code == 201
    assert Conversation.objects.get(pk=created.json()["id"]).title == title
    content = "tabs\tand\nnewlines stay, astral \U0001f40c too"
    posted = api.post(
        f"{CONVERSATIONS}/{conversation.pk}/messages",
        {"role": "user", "content": content},
        format="json",
    )
    assert posted.status_code == 201
    assert Message.objects.get(pk=posted.json()["id"]).content == content


@pytest.mark.parametrize(
    "raw_id",
    [
        "0",
        "-1",
        "99999999999999999999999999",
        "9" * 40,
        "9223372036854775808",
        "abc",
        "1e3",
        "1.0",
        "1.5",
        "%00",
        "%F0%9F%90%8C",
        "1%20",
        "0x10",
    ],
)
def test_odd_ids_get_the_same_404_as_a_missing_conversation(api, conversation, raw_id):
    missing = api.get(f"{CONVERSATIONS}/{conversation.pk + 1000}")
    for method in ("get", "patch", "delete"):
        response = getattr(api, method)(f"{CONVERSATIONS}/{raw_id}", {"title": "t"}, format="json")
        assert response.status_code == 404, (method, raw_id)
        assert response.content == missing.content
    messages_url = f"{CONVERSATIONS}/{raw_id}/messages"
    for response in (
        api.get(messages_url),
        api.post(messages_url, {"role": "user", "content": "x"}, format="json"),
    ):
        assert response.status_code == 404 and response.content == missing.content
    _nothing_stored(conversation)


@pytest.mark.parametrize("raw_id", ["abc", "not-a-uuid", "-1", "0" * 200, "%00", "{}"])
def test_odd_job_ids_get_the_same_404_as_a_missing_job(api, raw_id):
    missing = api.get("/api/queues/jobs/00000000-0000-0000-0000-000000000000")
    response = api.get(f"/api/queues/jobs/{raw_id}")
    assert response.status_code == 404
    assert response.json() == {"error": "job_not_found", "detail": "Job not found."}
    assert response.content == missing.content


@pytest.mark.parametrize("page", ["", "-1", "0", "1.5", "abc", "999999999999999999999"])
def test_odd_page_numbers_get_a_404_not_page_one(api, conversation, page):
    response = api.get(CONVERSATIONS, {"page": page})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_a_json_body_that_is_not_an_object_gets_a_400(api):
    for body in ("[]", '"title"', "42", "null"):
        response = api.generic("POST", CONVERSATIONS, body, content_type="application/json")
        assert response.status_code == 400, body
    _nothing_stored()


@pytest.mark.parametrize("value", [5, 1.5, True, None, ["a"], {"a": 1}])
def test_titles_roles_and_contents_that_are_not_strings_get_a_400(api, conversation, value):
    created = api.post(CONVERSATIONS, {"title": value}, format="json")
    assert created.status_code == 400
    assert list(created.json()["fields"]) == ["title"]
    renamed = api.patch(f"{CONVERSATIONS}/{conversation.pk}", {"title": value}, format="json")
    assert renamed.status_code == 400 and list(renamed.json()["fields"]) == ["title"]
    title = conversation.title
    conversation.refresh_from_db()
    assert conversation.title == title  # a refused rename changes nothing
    for field in ("role", "content"):
        body = {"role": "user", "content": "hi", field: value}
        posted = api.post(f"{CONVERSATIONS}/{conversation.pk}/messages", body, format="json")
        assert posted.status_code == 400
        assert list(posted.json()["fields"]) == [field]
    job = api.post(
        "/api/queues/jobs",
        {"queue": "database", "type": "create_conversation", "data": {"title": value}},
        format="json",
    )
    assert job.status_code == 400
    _nothing_stored(conversation)
