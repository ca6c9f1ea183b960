"""The worker loop of our cluster: django-q2's `worker`, minus the monitor's share of a runner job.

A runner job is finished when `run_job` returns: its outcome is in our job record, its broker row
was deleted in the same transaction (`queues.django_q2.acknowledgement`), and django-q2 saves no
successes (`save_limit: -1`). So such a task goes nowhere, rather than onto the result queue for a
monitor that would only log it, and django-q2 logs nothing of it (the runner logs its outcome).
Every other task goes to the monitor as with django-q2: a schedule's plain function (counted by
`queues.django_q2.scheduler`), a delivery the runner had nothing to do for, a failure escaping the
runner (the database is down), and anything django-q2 would save.

The rest is django-q2's `worker`: the guard's `timer` (-1 idle, the timeout + GUARD_BUFFER while
busy, 0 timed out: the guard kills it, -2 recycled), `TimeoutHandler` (but for the runner, which
keeps its own), RECYCLE and max_rss, the process title, the `pre_execute`,
`post_execute_in_worker` and `post_spawn` signals, closing stale connections before each task, and
the error reporter.
"""

import pydoc
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from multiprocessing import current_process

from django.utils import timezone
from django_q.conf import Conf, error_reporter, logger
from django_q.exceptions import TimeoutException
from django_q.signals import post_execute_in_worker, post_spawn, pre_execute
from django_q.timeout import TimeoutHandler
from django_q.utils import close_old_django_connections, get_func_repr
from django_q.worker import rss_check

from queues.django_q2 import scheduler
from queues.django_q2.payload import RUNNER
from queues.execution.runner import run_job

try:
    from setproctitle import setproctitle
except ModuleNotFoundError:
    setproctitle = None

IDLE, TIMED_OUT, RECYCLED = -1, 0, -2  # the guard's reading of `timer` besides seconds left
# Seconds beyond the timeout before the guard kills a busy worker: time to report the timeout.
GUARD_BUFFER = 3


def worker(task_queue, result_queue, timer, timeout=Conf.TIMEOUT):
    """Run the tasks of `task_queue` until "STOP", handing to `result_queue` those the monitor
    has work for; `timer` tells the guard how long this worker may stay busy."""
    name = current_process().name
    logger.info("%s ready for work at %s", name, current_process().pid)
    post_spawn.send(sender="django_q", proc_name=name)
    set_title(f"qcluster {name} idle")
    timeout = -1 if timeout is None else timeout
    for count, task in enumerate(iter(task_queue.get, "STOP"), start=1):
        timer.value = IDLE
        func = announce(name, task)
        close_old_django_connections()
        seconds = task.pop("timeout", timeout)
        pre_execute.send(sender="django_q", func=func, task=task)
        timer.value = seconds if seconds == -1 else seconds + GUARD_BUFFER
        result, success, timed_out = execute(func, task, seconds)
        if func is not run_job:  # before the guard's lock: it may write to the database
            scheduler.function_finished(task, success, result)
        with timer.get_lock():
            task.update(result=result, success=success, stopped=timezone.now())
            post_execute_in_worker.send(sender="django_q", func=func, task=task)
            if monitor_has_work(task):
                result_queue.put(task)
            if timed_out:
                timer.value = TIMED_OUT  # the guard replaces this worker
                break
            timer.value = IDLE
            set_title(f"qcluster {name} idle")
            if count == Conf.RECYCLE or rss_check():
                timer.value = RECYCLED
                break
    logger.info("%s stopped doing work", name)


def monitor_has_work(task):
    """Whether django-q2's monitor does more for `task` than log it: acknowledge its delivery,
    log a failure, or save it and run its chain (with `save_limit: -1`, never a success)."""
    acknowledged = task.pop("acknowledged_by_runner", False)
    saved = task.get("cached") or task.get("save", Conf.SAVE_LIMIT >= 0)
    return not (acknowledged and task["success"]) or saved


def announce(name: str, task: dict) -> Callable | None:
    """Log the task (a runner job logs its own start) and show it in the process title; the
    task's function (None if its dotted path names none).

    Our broker rows name the runner by `payload.RUNNER`, taken here for `run_job` itself; another
    dotted path (a schedule's function) is looked up as django-q2 does.
    """
    func = task["func"]
    if func == RUNNER:
        func = run_job
    elif not callable(func):
        func = pydoc.locate(func)
    description = f"{task['name']} '{get_func_repr(task['func'])}'"
    if "group" in task:
        description += f" [{task['group']}]"
    if func is not run_job:
        logger.info("%s processing %s", name, description)
    # The guard reads the task's name back from this title when it kills the worker.
    set_title(f"qcluster {name} processing {description}")
    return func


def execute(func, task, seconds):
    """(result or error text, success, whether it timed out) of running `task`."""
    try:
        if func is None:
            raise ValueError(f"Function {task['func']} is not defined")
        # The runner keeps its own timeout (`runner.handler_timeout`), on the same timer
        # (ITIMER_REAL), which replaces django-q2's alarm anyway; the guard stays the backstop.
        alarm = nullcontext() if func is run_job else TimeoutHandler(seconds)
        with alarm:
            return func(*task["args"], **task["kwargs"]), True, False
    except (Exception, TimeoutException) as exc:
        if error_reporter:
            error_reporter.report()
        return f"{exc} : {traceback.format_exc()}", False, isinstance(exc, TimeoutException)


def set_title(title):
    if setproctitle:
        setproctitle(title)
