"""The project's settings with workers recycled after every 2 tasks (django-q2's `recycle`), for
a real cluster started with `DJANGO_SETTINGS_MODULE` pointing here."""

from slimy.settings import *  # noqa: F403
from slimy.settings import Q_CLUSTER

Q_CLUSTER = {**Q_CLUSTER, "recycle": 2}
