"""The project's settings plus a periodic job of a test type that always fails, every minute, for
real `qcluster`s started with `DJANGO_SETTINGS_MODULE` pointing here (the test process declares
the same entry, `PERIODIC`, with the `settings` fixture)."""

from slimy.settings import *  # noqa: F403
from slimy.settings import QUEUE_SCHEDULES

PERIODIC = {
    "name": "test: fails every minute",
    "job_type": "test_periodic",
    "data": {"fail_times": 5},
    "minutes": 1,
}
QUEUE_SCHEDULES = [*QUEUE_SCHEDULES, PERIODIC]
