"""The operator account `scripts/run` prepares: staff, in a group granting exactly the job
permissions, not a superuser; what it may open and do, and what it may not."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command

from queues.web.operators import OPERATOR_GROUP
from tests.support.clients import token_client

pytestmark = pytest.mark.django_db


def make_operator(username="operator", password="operator-password"):
    out = StringIO()
    call_command("queue_operator", username, "--password", password, stdout=out)
    return out.getvalue()


@pytest.fixture
def operator():
    make_operator()
    return get_user_model().objects.get(username="operator")


def test_the_command_makes_a_staff_operator_whose_access_comes_from_its_group(operator):
    assert operator.is_staff and not operator.is_superuser
    assert not operator.user_permissions.exists()
    assert [g.name for g in operator.groups.all()] == [OPERATOR_GROUP]
    group = Group.objects.get(name=OPERATOR_GROUP)
    granted = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
    assert granted == {"queues.view_job", "queues.change_job", "queues.pause_queue"}
    assert operator.get_all_permissions() == granted


def test_the_command_is_idempotent_and_repairs_the_group(operator):
    group = Group.objects.get(name=OPERATOR_GROUP)
    group.permissions.clear()
    operator.is_staff = False
    operator.save()

    out = make_operator(password="a-different-password")

    operator.refresh_from_db()
    assert operator.is_staff and operator.check_password("operator-password")
    assert group.permissions.count() == 3
    assert Group.objects.filter(name=OPERATOR_GROUP).count() == 1
    assert operator.groups.count() == 1
    assert "operator (its own password)" in out
    assert "operator / operator-password" in make_operator()


def test_the_operator_opens_the_jobs_admin_and_the_dashboard_but_no_user_data(
    client, operator, failed_job
):
    client.force_login(operator)
    for url in (
        "/admin/",
        "/admin/queues/job/",
        f"/admin/queues/job/{failed_job.pk}/change/",
        "/dashboard/queues",
    ):
        assert client.get(url).status_code == 200, url
    for url in ("/admin/chat/conversation/", "/admin/chat/message/", "/admin/auth/user/"):
        assert client.get(url).status_code == 403, url
    index = client.get("/admin/").content.decode()
    assert "/admin/queues/job/" in index and "/admin/chat/" not in index


def test_the_operator_retries_a_failed_job_from_the_admins_failed_list(
    client, operator, failed_job
):
    client.force_login(operator)
    response = client.post(
        "/admin/queues/job/?status__exact=failed",
        {"action": "retry_selected", "_selected_action": [failed_job.pk]},
        follow=True,
    )
    assert [str(m) for m in response.context["messages"]] == [
        "1 failed job(s) sent back to their queue."
    ]
    failed_job.refresh_from_db()
    assert (failed_job.status, failed_job.retried_by) == ("queued", operator)


def test_the_operator_reads_other_users_job_records_through_the_api(operator, failed_job):
    response = token_client(operator).get(f"/api/queues/jobs/{failed_job.pk}")
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
