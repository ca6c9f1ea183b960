"""Admin pages stay the same size however much a conversation holds; the job list is readable."""

import pytest

from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


def test_a_conversation_with_many_messages_renders_and_saves_in_constant_size(
    admin_client, user, django_assert_max_num_queries
):
    conversation = Conversation.objects.create(owner=user, title="Big", message_count=600)
    Message.objects.bulk_create(
        Message(conversation=conversation, role="user", content=f"message number {n}")
        for n in range(600)
    )
    url = f"/admin/chat/conversation/{conversation.pk}/change/"
    with django_assert_max_num_queries(12):
        page = admin_client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "message number" not in html
    assert f"/admin/chat/message/?conversation__id__exact={conversation.pk}" in html
    assert "600 message(s)" in html
    saved = admin_client.post(url, {"owner": user.pk, "title": "Renamed", "_save": "Save"})
    assert saved.status_code == 302, saved.content
    conversation.refresh_from_db()
    assert (conversation.title, conversation.message_count) == ("Renamed", 600)


def test_the_message_list_of_one_conversation_is_paginated(admin_client, user):
    conversation = Conversation.objects.create(owner=user, title="Big")
    other = Conversation.objects.create(owner=user, title="Other")
    Message.objects.bulk_create(
        Message(conversation=c, role="user", content="x") for c in (conversation, other) * 60
    )
    url = f"/admin/chat/message/?conversation__id__exact={conversation.pk}"
    listed = admin_client.get(url)
    assert listed.status_code == 200
    assert len(listed.context["cl"].result_list) == 50
    last = admin_client.get(url + "&p=2").context["cl"].result_list
    assert len(last) == 10
    assert {m.conversation_id for m in last} == {conversation.pk}


def test_deleting_messages_in_the_admin_keeps_the_count(admin_client, user):
    conversation = Conversation.objects.create(owner=user, title="Counted", message_count=3)
    messages = Message.objects.bulk_create(
        Message(conversation=conversation, role="user", content="x") for _ in range(3)
    )
    response = admin_client.post(
        "/admin/chat/message/",
        {
            "action": "delete_selected",
            "_selected_action": [m.pk for m in messages[:2]],
            "post": "yes",
        },
    )
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.message_count == 1 == conversation.messages.count()


def test_the_job_list_shows_short_ids_times_to_the_second_and_the_error_of_failed_jobs(
    client, operator_user, user
):
    from queues.api import enqueue
    from queues.core.services import retry_jobs
    from queues.execution.runner import run_job
    from queues.models import Job

    job = enqueue("test_fails_once", {"user_id": user.pk})
    run_job(job.pk)
    job = Job.objects.get(pk=job.pk)
    client.force_login(operator_user)

    def listed_row():
        page = client.get("/admin/queues/job/").content.decode()
        assert 'id="nav-sidebar"' not in page  # the list gets the page's width
        return page[page.index(f'<span title="{job.pk}">') :].split("</tr>")[0]

    row = listed_row()
    assert f"{str(job.pk)[:8]}…" in row
    for moment in (job.created_at, job.finished_at):
        assert f'<span class="date">{moment:%Y-%m-%d}</span> {moment:%H:%M:%S}' in row
    assert "PermanentJobError: simulated failure" in row
    assert f"{job.attempts}/{job.max_attempts}" in row
    detail = client.get(f"/admin/queues/job/{job.pk}/change/").content.decode()
    for moment in (job.created_at, job.run_after, job.finished_at):
        assert f"{moment:%Y-%m-%d %H:%M:%S}" in detail  # the job's page too, to the second

    retry_jobs(Job.objects.filter(pk=job.pk), by=operator_user)
    run_job(job.pk)
    assert Job.objects.get(pk=job.pk).status == "succeeded"
    assert "PermanentJobError" not in listed_row()  # on its page, not beside "Succeeded"


def test_the_job_page_shows_its_options_and_progress(client, operator_user, user):
    from queues.api import enqueue
    from queues.models import Job

    job = enqueue("test_progress", {"user_id": user.pk}, timeout=7.5, backoff_seconds=3)
    Job.objects.filter(pk=job.pk).update(progress=60, progress_message="step 3 of 5")
    client.force_login(operator_user)

    detail = client.get(f"/admin/queues/job/{job.pk}/change/").content.decode()

    for heading in ("Options", "Progress"):
        assert f'class="fieldset-heading">{heading}</h2>' in detail
    assert "7.5" in detail and "step 3 of 5" in detail and "60.0" in detail
