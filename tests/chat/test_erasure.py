"""Once a conversation's deletion job succeeds, nothing of its title or content remains anywhere."""

import logging
import sqlite3
import subprocess
import uuid
from contextlib import closing
from pathlib import Path

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.db import connection
from django.forms import MultiWidget
from django.test import Client

from chat.models import Conversation
from queues.execution.runner import run_job
from queues.models import Job
from tests.support.clients import enqueue_via_api, token_client
from tests.support.jobs import wait_for_job

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

VERBOSE_LOGS = {"LOG_LEVEL": "DEBUG", "DJANGO_Q_LOG_LEVEL": "DEBUG"}


def enqueued_id(client, job_type, data):
    response = enqueue_via_api(client, job_type, data)
    assert response.status_code == 202, response.content
    return response.json()["id"]


def admin_change_data(response, **changes):
    """The admin change form's current values as POST data, with `changes` applied."""
    data = {}
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        forms += [formset.management_form, *formset.forms]
    for form in forms:
        for field in form:
            value = field.value()
            if isinstance(field.field.widget, MultiWidget):
                for i, part in enumerate(value or ["", ""]):
                    data[f"{field.html_name}_{i}"] = part or ""
            else:
                data[field.html_name] = "" if value is None else value
    data.update(changes)
    return data


def database_dump():
    settings = connection.settings_dict
    if connection.vendor == "postgresql":
        return subprocess.run(
            [
                "pg_dump",
                "--data-only",
                "-h",
                settings["HOST"] or "127.0.0.1",
                "-p",
                str(settings["PORT"] or 5432),
                "-U",
                settings["USER"],
                settings["NAME"],
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    path = settings["NAME"]
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        logical = "\n".join(db.iterdump())
    # With secure_delete, not even the file's free pages keep deleted text.
    return logical + Path(path).read_bytes().decode("latin-1")


def test_nothing_of_a_deleted_conversation_remains_in_database_or_logs(
    cluster, user, other_user, superuser, caplog
):
    caplog.set_level(logging.DEBUG)
    marker = f"ERASE-ME-{uuid.uuid4().hex}"
    api, stranger = token_client(user), token_client(other_user)
    first = cluster.start(extra_env=VERBOSE_LOGS)

    created = enqueued_id(api, "create_conversation", {"title": f"Secret {marker}"})
    conversation_id = wait_for_job(created, until="succeeded").result["conversation_id"]
    messages_url = f"/api/chat/conversations/{conversation_id}/messages"
    sent = api.post(messages_url, {"role": "user", "content": f"api {marker}"}, format="json")
    assert sent.status_code == 201
    saved = enqueued_id(
        api,
        "save_message",
        {"conversation_id": conversation_id, "role": "assistant", "content": f"job {marker}"},
    )
    wait_for_job(saved, until="succeeded")
    refused = enqueued_id(
        stranger,
        "save_message",
        {"conversation_id": conversation_id, "role": "user", "content": f"foreign {marker}"},
    )
    assert wait_for_job(refused, until="failed").last_error_class == "ConversationGone"

    admin = api.__class__()
    admin.force_login(superuser)
    change_url = f"/admin/chat/conversation/{conversation_id}/change/"
    form = admin.get(change_url)
    edited = admin.post(change_url, admin_change_data(form, title=f"Edited {marker}"))
    assert edited.status_code == 302, edited.content
    assert LogEntry.objects.filter(object_id=str(conversation_id)).exists()

    # A message still waiting when the deletion is requested is cancelled, not run.
    first.stop()
    waiting = enqueued_id(
        api,
        "save_message",
        {"conversation_id": conversation_id, "role": "user", "content": f"late {marker}"},
    )
    deleted = api.delete(f"/api/chat/conversations/{conversation_id}")
    assert deleted.status_code == 200
    assert Job.objects.get(pk=waiting).status == "cancelled"
    second = cluster.start(extra_env=VERBOSE_LOGS)
    wait_for_job(deleted.json()["job_id"], until="succeeded")

    assert not Conversation.objects.filter(pk=conversation_id).exists()
    kept_failure = Job.objects.get(pk=refused)
    assert kept_failure.status == "failed" and kept_failure.traceback
    assert "content" not in kept_failure.data
    assert Job.objects.get(pk=waiting).attempts == 0
    second.stop()
    dump = database_dump()
    assert str(conversation_id) in dump  # the dump is real: ids stay
    assert marker not in dump
    logs = caplog.text + first.log + second.log
    assert "job attempt" in logs
    assert marker not in logs


def run(job_id):
    run_job(job_id)
    return Job.objects.get(pk=job_id)


def delete_in_admin(user, conversation_id, path):
    superuser = get_user_model().objects.create_superuser("root", password="pw-for-tests-123")
    admin = Client()
    admin.force_login(superuser)
    target = {
        "conversation": f"chat/conversation/{conversation_id}",
        "user": f"auth/user/{user.pk}",
    }
    response = admin.post(f"/admin/{target[path]}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content


def delete_through_api(api, user, conversation_id):
    deletion = api.delete(f"/api/chat/conversations/{conversation_id}")
    assert run(deletion.json()["job_id"]).status == "succeeded"


PATHS = {
    "api": delete_through_api,
    "admin-conversation": lambda api, user, cid: delete_in_admin(user, cid, "conversation"),
    "admin-user": lambda api, user, cid: delete_in_admin(user, cid, "user"),
    "shell-conversation": lambda api, user, cid: Conversation.objects.get(pk=cid).delete(),
    "shell-queryset": lambda api, user, cid: Conversation.objects.filter(owner=user).delete(),
    "shell-user-cascade": lambda api, user, cid: user.delete(),
}


@pytest.mark.postgres
@pytest.mark.parametrize("path", PATHS)
def test_every_deletion_path_leaves_no_title_or_content_in_the_database(user, other_user, path):
    marker = f"ERASE-ME-{uuid.uuid4().hex}"
    api = token_client(user)
    created = enqueued_id(api, "create_conversation", {"title": f"Secret {marker}"})
    conversation_id = run(created).result["conversation_id"]
    messages_url = f"/api/chat/conversations/{conversation_id}/messages"
    sent = api.post(messages_url, {"role": "user", "content": f"api {marker}"}, format="json")
    assert sent.status_code == 201
    message = {"conversation_id": conversation_id, "role": "user"}
    saved = enqueued_id(api, "save_message", {**message, "content": f"job {marker}"})
    assert run(saved).status == "succeeded"
    waiting = enqueued_id(api, "save_message", {**message, "content": f"waiting {marker}"})
    assert marker in database_dump()

    PATHS[path](api, user, conversation_id)

    assert not Conversation.objects.filter(pk=conversation_id).exists()
    assert Job.objects.get(pk=waiting).status == "cancelled"
    if path == "api":
        # A message enqueued after the deletion ran fails as "conversation gone", keeping none.
        late = enqueued_id(api, "save_message", {**message, "content": f"late {marker}"})
        assert run(late).last_error_class == "ConversationGone"
    dump = database_dump()
    assert str(conversation_id) in dump  # the dump is real: ids stay
    assert marker not in dump
