"""A second queue, `emails`, beside `database`: settings for a real cluster started with
`DJANGO_SETTINGS_MODULE=tests.support.two_queues`, and its job types (`tests.support.emails_jobs`).

Only `QUEUES` names it: a cluster serves it with the options `queues.django_q2.cluster` derives
from its `QUEUES` entry, as a project that writes no `ALT_CLUSTERS` gets.
"""

from slimy.settings import *  # noqa: F403
from slimy.settings import JOB_TYPE_MODULES, QUEUES
from tests.settings import PASSWORD_HASHERS  # noqa: F401

EMAILS = {"workers": 2, "timeout": 10}
QUEUES = {**QUEUES, "emails": EMAILS}
JOB_TYPE_MODULES = [*JOB_TYPE_MODULES, "tests.support.emails_jobs"]
