"""The project's settings plus a schedule whose cron expression croniter cannot read, for a real
`qcluster` started with `DJANGO_SETTINGS_MODULE` pointing here."""

from slimy.settings import *  # noqa: F403
from slimy.settings import QUEUE_SCHEDULES

BAD_CRON = {"name": "bad cron", "job_type": "test_periodic", "cron": "61 * * * *"}
QUEUE_SCHEDULES = [*QUEUE_SCHEDULES, BAD_CRON]
