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

Its workers run our worker loop (`queues.django_q2.worker`); its scheduler is
`queues.django_q2.scheduler`'s.
"""

import logging
import queue
import signal
import time
import uuid
from multiprocessing import Event, Value, current_process

from django_q import cluster as q_cluster
from django_q.conf import Conf, logger
from django_q.status import Stat

from queues.conf import conf
from queues.django_q2.scheduler import run_due_schedules
from queues.django_q2.worker import IDLE, worker

# The sentinel's guard calls django-q2's module-level `scheduler` about every 30 s: ours runs each
# schedule in its own transaction, so one failing schedule never stops the others.
q_cluster.scheduler = run_due_schedules

# Seconds beyond the queue's timeout a worker gets to record its job's outcome during a stop.
STOP_GRACE = 5
POLL = 0.1
log = logging.getLogger(__name__)


class Cluster(q_cluster.Cluster):
    def start(self):
        """django-q2's `Cluster.start`, running our Sentinel."""
        self.stop_event, self.start_event = Event(), Event()
        self.sentinel = q_cluster.get_mp_context().Process(
            target=Sentinel,
            name=f"Process-{uuid.uuid4().hex}",
            args=(self.stop_event, self.start_event, self.cluster_id, self.broker, self.timeout),
        )
        self.sentinel.start()
        logger.info("Q Cluster %s starting.", self.name)
        # Polls instead of `start_event.wait()`, which a signal arriving meanwhile would deadlock
        # (django-q2 does the same); the handler sets start_event to None.
        while self.start_event and not self.start_event.is_set():
            if not self.sentinel.is_alive():
                if self.sentinel.exitcode == 0:
                    break  # stopped by a signal while starting
                raise RuntimeError(
                    f"Q Cluster {self.name} failed to start: "
                    f"sentinel exited with code {self.sentinel.exitcode}"
                )
            time.sleep(POLL)
        if self.start_event and self.start_event.is_set():
            log.info(
                "Worker cluster %s ready: %d workers on queue %r.",
                self.name,
                Conf.WORKERS,
                Conf.CLUSTER_NAME,
            )
        return self.pid

    def sig_handler(self, signum, frame):
        name = signal.Signals(signum).name
        if getattr(self, "stopping", False):
            logger.info("Q Cluster %s got %s while stopping; still stopping.", self.name, name)
            return
        self.stopping = True
        logger.info("Q Cluster %s got %s.", self.name, name)
        self.stop()


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
