"""Job types of the `emails` queue of `tests.support.two_queues` (import it with that queue in
QUEUES: registration refuses an unknown queue)."""

import time

from queues.api import job_type as register
from tests.support.job_types import TestData


@register("test_email_sleep", queue="emails", schema=TestData)
def email_sleep(data):
    time.sleep(data["seconds"])
    return {"slept": data["seconds"]}
