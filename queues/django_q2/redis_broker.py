"""The `database` queue on django-q2's Redis broker, for more throughput than a table gives.

Selected with `QUEUE_BROKER=redis`. What changes against the ORM broker (`queues.django_q2.broker`):

- Redis cannot join the database transaction, so `queues.django_q2.push` hands the row to Redis
  only once the job record is committed. A crash between the commit and the push loses the delivery,
  not the job record.
- Delayed retries wait in a sorted set scored by the time they may run; each `dequeue` first
  moves the due ones onto the queue's list, atomically (a Lua script), so two clusters never
  both take one.
- Redis hands a task out once and has no visibility timeout: a task whose worker is SIGKILLed is
  not delivered again by Redis.

Both kinds of lost delivery are pushed again from the job records by the rescuer
(`queues.maintenance.rescuer`), which every pusher runs as it dequeues: a dead worker's job at once
(its liveness lock is in the database), a waiting job once it is `QUEUE_STRANDED_AFTER` seconds late
(Redis cannot be asked whether it holds a task: finding one is a scan of the list).

Cluster heartbeats stay in the database (`queues.django_q2.heartbeats`), so `/readyz`, the dashboard
and the stats see the clusters of either broker.
"""

import time

import redis
from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf
from django_q.signing import SignedPackage

from queues.core import pausing
from queues.django_q2.heartbeats import DatabaseHeartbeats
from queues.engine import reconnect
from queues.maintenance.rescuer import rescue_now_and_then

# Moves up to 100 due tasks from the delayed set (KEYS[1]) to the queue (KEYS[2]).
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, task in ipairs(due) do
    redis.call('ZREM', KEYS[1], task)
    redis.call('RPUSH', KEYS[2], task)
end
return #due
"""
# Seconds a command waits for an unreachable Redis before it raises: a web request that pushes
# after its commit answers in time (`queues.django_q2.push.push_committed`), a pusher notices at
# once. Above the 1 s of django-q2's BLPOP. Options in REDIS_URL (`?socket_timeout=...`) win.
CONNECT_TIMEOUT = 2
COMMAND_TIMEOUT = 10


class RedisJobBroker(DatabaseHeartbeats, Redis):
    # Tells `queues.django_q2.push` to wait for the transaction's commit.
    joins_transactions = False

    def __init__(self, list_key=None):
        super().__init__(list_key=list_key)
        self.queue = list_key or Conf.CLUSTER_NAME  # django-q2 makes `list_key` a Redis key
        self.delayed_key = f"{self.list_key}:delayed"
        self._move_due = self.connection.register_script(_MOVE_DUE)

    @staticmethod
    def get_connection(list_key=None):
        if not isinstance(Conf.REDIS, str):
            return Redis.get_connection(list_key)
        return redis.from_url(
            Conf.REDIS, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT
        )

    @property
    def queue_name(self):
        return self.queue

    def enqueue(self, task, run_after=None):
        when = run_after.timestamp() if run_after is not None else 0
        if when > time.time():
            return self.connection.zadd(self.delayed_key, {task: when})
        return self.connection.rpush(self.list_key, task)

    def dequeue(self):
        rescue_now_and_then(self.queue)
        if reconnect.once(pausing.wait_if_paused)(self.queue):
            return None
        self._move_due(keys=[self.delayed_key, self.list_key], args=[time.time()])
        return super().dequeue()

    def hand_back(self, tasks):
        """Put claimed tasks that never started back at the head of the list, in their order."""
        packages = [
            SignedPackage.dumps({k: v for k, v in t.items() if k != "ack_id"}) for t in tasks
        ]
        self.connection.lpush(self.list_key, *reversed(packages))

    def queue_size(self):
        return super().queue_size() + self.connection.zcard(self.delayed_key)

    def delete_queue(self):
        return self.connection.delete(self.list_key, self.delayed_key)

    def purge_queue(self):
        self.connection.delete(self.delayed_key)
        return super().purge_queue()
