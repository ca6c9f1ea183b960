"""Settings of the benchmark's reference cluster: stock django-q2 on the same project.

`bench/run.py` starts `manage.py qcluster` with `DJANGO_SETTINGS_MODULE=bench.stock_settings` for
its "stock" scenario. Everything is the project's but the queue configuration: django-q2's own ORM
broker with its defaults (it polls and claims row by row), no persistent database connections,
and cluster status in a per-process memory cache, as django-q2 keeps it out of the box.
"""

from slimy.settings import *  # noqa: F403
from slimy.settings import DATABASES, Q_CLUSTER

Q_CLUSTER = {
    "name": Q_CLUSTER["name"],
    "orm": "default",
    "catch_up": False,
    "timeout": Q_CLUSTER["timeout"],
    "retry": Q_CLUSTER["retry"],
    "workers": Q_CLUSTER["workers"],
}
DATABASES["default"]["CONN_MAX_AGE"] = 0
# Stock django-q2 writes cluster status to the cache every guard cycle: keep it in memory.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
