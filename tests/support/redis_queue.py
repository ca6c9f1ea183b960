"""The `database` queue on Redis in tests: a Redis database number of its own (the fixture
`redis_queue` empties it), so tests touch nobody else's keys. `TEST_REDIS_URL` picks another
one, so that two test runs on one machine stay apart; a parallel run (`-n N`) takes that
number and the N - 1 after it."""

import os
import subprocess

import redis

from tests.support.cluster import FAST_RECOVERY, wait_for
from tests.support.pg_server import free_port


def _worker_url(url: str) -> str:
    """`url`'s database number plus the pytest-xdist worker's index (gw0, gw1, ...): each worker
    of a parallel run empties and fills a Redis database of its own."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db or 0) + int(worker.removeprefix('gw'))}"


REDIS_URL = _worker_url(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13"))
# A cluster's settings for the queue on Redis.
ON_REDIS = {"QUEUE_BROKER": "redis", "REDIS_URL": REDIS_URL, **FAST_RECOVERY}


class RedisServer:
    """A throwaway `redis-server` of the test's own, on a free port, for faults that need Redis
    gone: the shared one is never stopped. `url` answers nothing until `start()`."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, message=f"redis-server on port {self.port}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def _answers(self):
        try:
            return redis.from_url(self.url, socket_connect_timeout=1).ping()
        except redis.ConnectionError:
            return False
