"""The queue operators' group: the permissions that watch, retry and cancel jobs and pause
queues, and nothing else.

Access follows Django permissions, not `is_staff`: staff status only lets an account into the
admin site, and this group decides what it sees there (the Jobs pages and their Retry action),
on the dashboard and in the jobs API. Operators see no conversations, messages or users.
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction

OPERATOR_GROUP = "Queue operators"
# view_job: every user's job records (admin Jobs pages, dashboard, jobs API);
# change_job: send failed jobs back to their queue, cancel jobs, ask running ones to stop
# (admin actions, dashboard, API); pause_queue: pause and resume queues (admin, dashboard).
OPERATOR_PERMISSIONS = ("queues.view_job", "queues.change_job", "queues.pause_queue")


def operator_group():
    """The group, created or reset so it grants exactly OPERATOR_PERMISSIONS."""
    group, _ = Group.objects.get_or_create(name=OPERATOR_GROUP)
    permissions = []
    for name in OPERATOR_PERMISSIONS:
        app_label, codename = name.split(".")
        permissions.append(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    group.permissions.set(permissions)
    return group


@transaction.atomic
def ensure_operator(username, password):
    """A staff account in the operators' group; (user, created). An existing password stays."""
    user, created = get_user_model().objects.get_or_create(
        username=username, defaults={"is_staff": True}
    )
    if created:
        user.set_password(password)
        user.save(update_fields=["password"])
    elif not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    user.groups.add(operator_group())
    return user, created
