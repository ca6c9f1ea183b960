"""The chat REST API through HTTP: shapes, errors, ownership."""

import json

import pytest

from chat import services
from chat.models import Conversation, Message
from queues.models import Job

pytestmark = pytest.mark.django_db


def test_token_endpoint_trades_credentials_for_a_token(client, user):
    response = client.post(
        "/api/auth/token",
        {"username": "alice", "password": "pw-for-tests-123"},
        content_type="application/json",
    )
    assert response.status_code == 200
    token = response.json()["token"]
    listed = client.get("/api/chat/conversations", HTTP_AUTHORIZATION=f"Token {token}")
    assert listed.status_code == 200


def test_token_endpoint_rejects_wrong_password_with_json_error(client, user):
    response = client.post(
        "/api/auth/token",
        {"username": "alice", "password": "nope"},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_credentials"


def test_list_shows_own_conversations_newest_first_with_counts(api, user, other_user):
    Conversation.objects.create(owner=other_user, title="Not mine")
    older = Conversation.objects.create(owner=user, title="Older")
    newer = Conversation.objects.create(owner=user, title="Newer")
    api.post(
        f"/api/chat/conversations/{newer.pk}/messages",
        {"role": "user", "content": "x"},
        format="json",
    )
    body = api.get("/api/chat/conversations").json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert [c["id"] for c in body["results"]] == [newer.pk, older.pk]
    assert body["results"][0]["message_count"] == 1
    assert set(body["results"][0]) == {"id", "title", "created_at", "updated_at", "message_count"}


def test_paths_work_with_and_without_trailing_slash(api, conversation):
    assert api.get("/api/chat/conversations/").status_code == 200
    assert api.get(f"/api/chat/conversations/{conversation.pk}/").status_code == 200
    assert api.get(f"/api/chat/conversations/{conversation.pk}/messages/").status_code == 200


def test_create_get_and_rename_a_conversation(api):
    created = api.post("/api/chat/conversations", {"title": "Plans"}, format="json")
    assert created.status_code == 201
    assert created.json()["message_count"] == 0
    pk = created.json()["id"]
    renamed = api.patch(f"/api/chat/conversations/{pk}", {"title": "Trips"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["title"] == "Trips"
    assert api.get(f"/api/chat/conversations/{pk}").json()["title"] == "Trips"


def test_put_is_not_allowed(api, conversation):
    response = api.put(f"/api/chat/conversations/{conversation.pk}", {"title": "x"}, format="json")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_messages_are_listed_oldest_first_and_appended(api, conversation):
    url = f"/api/chat/conversations/{conversation.pk}/messages"
    created = api.post(url, {"role": "assistant", "content": "hi there\n"}, format="json")
    assert created.status_code == 201
    body = api.get(url).json()
    assert [m["content"] for m in body["results"]] == ["m0", "m1", "m2", "hi there\n"]
    assert body["count"] == 4


def test_message_with_unknown_role_gets_a_400(api, conversation):
    response = api.post(
        f"/api/chat/conversations/{conversation.pk}/messages",
        {"role": "robot", "content": "x"},
        format="json",
    )
    assert response.status_code == 400
    assert "role" in response.json()["fields"]


def test_unknown_url_is_a_json_404(api):
    response = api.get("/api/nowhere")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def _not_found_cases(user, other_user):
    mine_deleted = Conversation.objects.create(owner=user, title="Going")
    api_delete_marked = mine_deleted.pk
    Conversation.objects.filter(pk=api_delete_marked).update(
        deletion_requested_at="2026-01-01T00:00:00Z"
    )
    theirs = Conversation.objects.create(owner=other_user, title="Theirs")
    return {
        "missing": "999999",
        "someone_else's": str(theirs.pk),
        "deletion_requested": str(api_delete_marked),
    }


@pytest.mark.parametrize(
    "method, suffix, body",
    [
        ("get", "", None),
        ("patch", "", {"title": "x"}),
        ("delete", "", None),
        ("get", "/messages", None),
        ("post", "/messages", {"role": "user", "content": "x"}),
    ],
)
def test_404_is_identical_for_missing_foreign_and_deletion_requested_conversations(
    api, user, other_user, method, suffix, body
):
    responses = {
        name: getattr(api, method)(f"/api/chat/conversations/{pk}{suffix}", body, format="json")
        for name, pk in _not_found_cases(user, other_user).items()
    }
    statuses = {name: r.status_code for name, r in responses.items()}
    assert set(statuses.values()) == {404}, statuses
    bodies = {r.content for r in responses.values()}
    assert len(bodies) == 1, bodies
    assert json.loads(bodies.pop()) == {
        "error": "conversation_not_found",
        "detail": "Conversation not found.",
    }
    assert Job.objects.count() == 0


def test_request_id_is_taken_from_client_when_sane_and_echoed(api):
    response = api.get("/api/chat/conversations", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"
    generated = api.get("/api/chat/conversations", HTTP_X_REQUEST_ID="bad id with spaces <script>")
    assert generated["X-Request-ID"] != "bad id with spaces <script>"
    assert len(generated["X-Request-ID"]) == 32


def test_message_counts_follow_inserts_and_deletes_without_counting_on_list(
    api, user, django_assert_max_num_queries
):

    conversation = Conversation.objects.create(owner=user, title="Counted")
    url = f"/api/chat/conversations/{conversation.pk}/messages"
    for n in range(3):
        assert api.post(url, {"role": "user", "content": f"m{n}"}, format="json").status_code == 201
    services.delete_messages(Message.objects.filter(pk=conversation.messages.first().pk))
    with django_assert_max_num_queries(4) as queries:
        listed = api.get("/api/chat/conversations").json()["results"]
    assert listed[0]["message_count"] == 2
    assert not any("chat_message" in q["sql"] for q in queries.captured_queries)
