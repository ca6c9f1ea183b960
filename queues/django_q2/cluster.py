"""django-q2's cluster with a stop that holds under systemd: `manage.py qcluster` runs this one.

django-q2's sentinel and the processes it starts keep SIGTERM's default action, so a signal to
the whole process group (systemd's default `KillMode=control-group`) kills jobs in flight, and the
main process can wait forever in `stop_event.set()` for a sentinel that died. Here the main
process alone leads a stop:
- the sentinel and everything it starts (pusher, monitor, workers) ignore SIGTERM and SIGINT; a
  worker the guard must cut off after a timeout is SIGKILLed instead of terminated;
- the first signal starts the stop, later ones are logged and ignored;
- the sentinel stops the pusher (woken from its wait, so an idle cluster stops at once), hands the
  jobs claimed but not started back to the broker so another cluster runs them now, lets each
  worker finish its job for up to the queue's timeout plus STOP_GRACE seconds, then SIGKILLs what
  is left, whose job is delivered again like any crashed worker's.

One cluster serves several queues, each with its own concurrency: the main process starts one
sentinel per queue (`serve_queue`), each with its own pusher, monitor and pool of workers, so a
busy queue never takes the workers of another. A sentinel process sets django-q2's `Conf` to its
queue's options (`queue_options`) before it starts anything, and what it forks inherits them;
one signal stops them all at once. A sentinel that dies outside a stop stops the others, and the
command exits non-zero, so the service manager restarts the whole cluster.

Its workers run our worker loop (`queues.django_q2.worker`); its scheduler is
`queues.django_q2.scheduler`'s.
"""

import ctypes
import logging
import math
import os
import queue
import signal
import time
import uuid
from multiprocessing import Event, Value, current_process, util
from typing import Any, NamedTuple

from django.conf import settings
from django_q import cluster as q_cluster
from django_q.brokers import get_broker
from django_q.conf import Conf, logger
from django_q.status import Stat

from queues.conf import conf
from queues.django_q2.scheduler import run_due_schedules
from queues.django_q2.worker import IDLE, set_title, worker

# The sentinel's guard calls django-q2's module-level `scheduler` about every 30 s: ours runs each
# schedule in its own transaction, so one failing schedule never stops the others.
q_cluster.scheduler = run_due_schedules

# Seconds beyond the queue's timeout a worker gets to record its job's outcome during a stop.
STOP_GRACE = 5
POLL = 0.1
log = logging.getLogger(__name__)


class QueueSentinel(NamedTuple):
    queue: str
    process: Any
    stop: Any  # its own stop event: setting one a dead process slept on would hang
    started: Any


class Cluster(q_cluster.Cluster):
    """The main `qcluster` process: one sentinel per queue of `queues` ({queue: workers})."""

    def __init__(self, queues: dict[str, int]):
        super().__init__()
        self.queues = dict(queues)
        self.sentinels: list[QueueSentinel] = []
        self.stopped = False

    def start(self):
        """django-q2's `Cluster.start`, one of our sentinels per queue."""
        context = q_cluster.get_mp_context()
        for name, workers in self.queues.items():
            stop, started = Event(), Event()
            process = context.Process(
                target=serve_queue,
                name=f"Process-{uuid.uuid4().hex}",
                args=(name, workers, stop, started, uuid.uuid4()),
            )
            process.start()
            self.sentinels.append(QueueSentinel(name, process, stop, started))
        # django-q2's attributes, for its `stat` and `is_running`: the first queue's.
        self.sentinel, self.stop_event, self.start_event = self.sentinels[0][1:]
        logger.info("Q Cluster %s starting.", self.name)
        # Polls instead of `Event.wait()`, which a signal arriving meanwhile would deadlock
        # (django-q2 does the same).
        while not self.stopped and not all(s.started.is_set() for s in self.sentinels):
            for sentinel in self.sentinels:
                code = sentinel.process.exitcode
                if code:  # 0: stopped by a signal while starting
                    self.stop()
                    raise RuntimeError(
                        f"Q Cluster {self.name} failed to start: the sentinel of queue "
                        f"{sentinel.queue!r} exited with code {code}"
                    )
            time.sleep(POLL)
        if not self.stopped:
            served = ", ".join(f"{name} ({n} workers)" for name, n in self.queues.items())
            log.info("Worker cluster %s ready: %s.", self.name, served)
        return self.pid

    def supervise(self) -> int:
        """Wait until the cluster stops; 0 after a stop by signal, 1 if a sentinel died first
        (the others are stopped then, so the whole cluster restarts, not half of it)."""
        while not self.stopped:
            dead = [s for s in self.sentinels if not s.process.is_alive()]
            if dead and not getattr(self, "stopping", False):
                self.stopping = True
                log.error(
                    "The sentinel of queue(s) %s exited with code %s; stopping the cluster",
                    ", ".join(s.queue for s in dead),
                    dead[0].process.exitcode,
                )
                self.stop()
                return 1
            time.sleep(POLL)
        return 0

    def stop(self) -> bool:
        """Stop every queue's live sentinel at once, and wait for all of them."""
        self.stopped = True
        live = [s for s in self.sentinels if s.process.is_alive()]
        if not live:
            return False
        logger.info("Q Cluster %s stopping.", self.name)
        for sentinel in live:
            sentinel.stop.set()
        for sentinel in self.sentinels:
            sentinel.process.join()
        logger.info("Q Cluster %s has stopped.", self.name)
        return True

    def sig_handler(self, signum, frame):
        name = signal.Signals(signum).name
        if getattr(self, "stopping", False):
            logger.info("Q Cluster %s got %s while stopping; still stopping.", self.name, name)
            return
        self.stopping = True
        logger.info("Q Cluster %s got %s.", self.name, name)
        self.stop()


# django-q2's `Conf` attributes a queue's options (Q_CLUSTER keys) may set, with django-q2's
# defaults for those its options leave out.
PER_QUEUE_CONF = {
    "cluster_name": ("CLUSTER_NAME", None),
    "workers": ("WORKERS", None),
    "timeout": ("TIMEOUT", None),
    "retry": ("RETRY", 60),
    "queue_limit": ("QUEUE_LIMIT", None),
    "bulk": ("BULK", 1),
    "recycle": ("RECYCLE", 500),
    "max_rss": ("MAX_RSS", None),
    "poll": ("POLL", 0.2),
}


def queue_options(name: str, workers: int | None = None) -> dict[str, Any]:
    """django-q2's options for a sentinel serving queue `name` with `workers` (its QUEUES
    setting's by default): `Q_CLUSTER`, under its `ALT_CLUSTERS[name]` for another queue than
    the main one.

    A queue without an `ALT_CLUSTERS` entry gets its guard timeout and visibility timeout
    (`retry`) from its QUEUES timeout, as `Q_CLUSTER`'s should be: timeout plus a little, and
    timeout plus `QUEUE_REDELIVERY_GRACE`. The local queue's prefetch (`queue_limit`) keeps its
    ratio to the workers, and a claim takes at most one row per worker.
    """
    main = dict(getattr(settings, "Q_CLUSTER", {}))
    alternatives = main.pop("ALT_CLUSTERS", None) or {}
    options = {**main, "cluster_name": name}
    queue = conf.QUEUES.get(name, conf.QUEUE_DEFAULTS)
    if name != main.get("name", "default"):
        alternative = alternatives.get(name)
        if isinstance(alternative, dict):
            options.update(
                {k: v for k, v in alternative.items() if k not in ("name", "cluster_name")}
            )
        else:
            options["timeout"] = queue["timeout"] + max(1, conf.QUEUE_REDELIVERY_GRACE // 2)
            options["retry"] = queue["timeout"] + conf.QUEUE_REDELIVERY_GRACE
    configured = options.get("workers") or queue["workers"]
    options["workers"] = workers or queue["workers"]
    per_worker = options.get("queue_limit", configured * 2) / configured
    options["queue_limit"] = max(options["workers"], math.ceil(per_worker * options["workers"]))
    options["bulk"] = min(options.get("bulk", 1), options["workers"])
    return options


def serve_queue(name, workers, stop_event, start_event, cluster_id):
    """A sentinel process: django-q2's `Conf` set to queue `name`'s options, then our Sentinel
    on its broker. What it forks (pusher, monitor, workers) inherits that `Conf`."""
    for sig in (signal.SIGTERM, signal.SIGINT):  # the main process leads a stop
        signal.signal(sig, signal.SIG_IGN)
    set_title(f"qcluster {current_process().name} sentinel [{name}]")
    options = queue_options(name, workers)
    for key, (attribute, default) in PER_QUEUE_CONF.items():
        setattr(Conf, attribute, options.get(key, default))
    global sentinel_pid
    sentinel_pid = os.getpid()
    util.register_after_fork(die_with_parent, die_with_parent)
    Sentinel(stop_event, start_event, cluster_id, get_broker(name))


PR_SET_PDEATHSIG = 1
sentinel_pid = None  # in a sentinel process and what it forks: the sentinel's pid


def die_with_parent(_=None):
    """Run in each process a sentinel forks (pusher, monitor, workers): on Linux it is SIGKILLed
    when the sentinel dies, so a sentinel killed outright (out of memory) leaves no pusher
    claiming or worker running without it; their jobs are rescued like any dead worker's.
    Elsewhere they outlive it, as with django-q2."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != sentinel_pid:  # the sentinel died before the line above
        os.kill(os.getpid(), signal.SIGKILL)


class Sentinel(q_cluster.Sentinel):
    def start(self):
        # Inherited by every process spawned from here on. django-q2 already ignores SIGINT.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        super().start()

    def spawn_worker(self):
        """django-q2's `spawn_worker`, running our worker loop (`queues.django_q2.worker`)."""
        timer = Value("f", IDLE)
        process = q_cluster.get_mp_context().Process(
            target=worker,
            args=(self.task_queue, self.result_queue, timer, self.timeout),
            name=f"Process-{uuid.uuid4().hex}",
        )
        process.daemon = Conf.DAEMONIZE_WORKERS
        process.timer = timer  # the guard's view of the worker: see `queues.django_q2.worker`
        self.pool.append(process)
        process.start()

    def reincarnate(self, process):
        if process in self.pool and process.timer.value == 0 and process.is_alive():
            process.kill()  # a worker out of time: it ignores django-q2's SIGTERM
        super().reincarnate(process)

    def stop(self):
        logger.info("%s stopping cluster processes", current_process().name)
        Stat(self).save()
        deadline = time.monotonic() + job_timeout(self.broker) + STOP_GRACE
        self.event_out.set()  # the pusher stops after its current dequeue
        self.wake_pusher()
        unstarted = []
        while self.pusher.is_alive():
            unstarted += self.take_unstarted()  # also frees a pusher blocked on a full queue
            self.pause()
        unstarted += self.take_unstarted()
        if unstarted:
            self.hand_back(unstarted)
        for _ in self.pool:
            self.task_queue.put("STOP")
        self.end(self.pool, deadline)
        self.result_queue.put("STOP")
        self.end([self.monitor], time.monotonic() + STOP_GRACE)
        self.pool = []
        Stat(self).save()

    def wake_pusher(self):
        """An idle pusher waits up to IDLE_WAIT for work: woken, it sees the stop at once, so an
        idle cluster stops in a fraction of a second (other clusters' pushers just look again)."""
        wake = getattr(self.broker, "wake_pushers", None)  # the database broker's
        if wake is None:
            return
        try:
            wake()
        except Exception:  # the database is down: the pusher's wait ends on its own
            logger.exception("Could not wake the pusher; it stops after its wait")

    def hand_back(self, tasks):
        try:
            self.broker.hand_back(tasks)
        except Exception:  # the broker is down: the stop goes on, redelivery brings them back
            logger.exception("Could not hand %d claimed jobs back to the queue", len(tasks))
        else:
            logger.info("Handed %d claimed jobs back to the queue", len(tasks))

    def take_unstarted(self):
        """The claimed tasks waiting in the cluster's local queue, taken off it.

        An idle worker blocked on the queue holds its read lock: what it would get next is left
        to it, and it runs that job at once.
        """
        tasks = []
        while True:
            try:
                tasks.append(self.task_queue.get(block=False))
            except queue.Empty:
                return tasks

    def end(self, processes, deadline):
        """Wait for `processes` to exit until `deadline`, then SIGKILL those still running."""
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            self.pause()
        for process in processes:
            if process.is_alive():
                logger.error("%s did not stop in time; killing it", process.name)
                process.kill()
                process.join()

    def pause(self):
        time.sleep(POLL)
        Stat(self).save()


def job_timeout(broker):
    """The timeout of the queue `broker` serves: how long a job may keep a stop waiting."""
    name = getattr(broker, "queue_name", broker.list_key)
    return conf.QUEUES.get(name, conf.QUEUE_DEFAULTS)["timeout"]
