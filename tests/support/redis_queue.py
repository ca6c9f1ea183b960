"""The `database` queue on Redis in tests: a Redis database number of its own (the fixture
`redis_queue` empties it), so tests touch nobody else's keys. `TEST_REDIS_URL` picks another
one, so that two test runs on one machine stay apart."""

import os

from tests.support.cluster import FAST_RECOVERY

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
# A cluster's settings for the queue on Redis.
ON_REDIS = {"QUEUE_BROKER": "redis", "REDIS_URL": REDIS_URL, **FAST_RECOVERY}
