"""Users' permissions in tests: granted the way an administrator would, by codename."""

from django.contrib.auth.models import Permission


def grant(user, *codenames: str):
    """Give `user` the permissions named by `codenames` (e.g. "view_job"); returns `user`."""
    permissions = Permission.objects.filter(codename__in=codenames)
    assert permissions.count() == len(codenames), f"unknown permission among {codenames}"
    user.user_permissions.add(*permissions)
    return user
