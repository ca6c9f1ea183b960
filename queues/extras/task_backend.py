"""A `django.tasks` backend (DEP 14, the `django-tasks` backport) on our job queue.

    TASKS = {"default": {"BACKEND": "queues.extras.task_backend.QueueBackend"}}

Each `.enqueue()` of a `@task` function stores one job, in the caller's transaction, of the job
type `django_task.<queue>` (registered for every queue of the `QUEUES` setting); its data names the
task by dotted path, with its JSON arguments. A `qcluster` worker runs it like any job: job
record, retries with backoff, timeout, metrics, admin and dashboard retry, erasure. Design and
mappings: docs/tasks.md.

OPTIONS: `{"QUEUES": {task queue name: our queue}}`. By default django.tasks' queue "default"
is the `DEFAULT_QUEUE` setting and each of our queues is its own name.
"""

import json
import re
from dataclasses import dataclass, replace
from inspect import iscoroutinefunction

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import transaction
from django.utils.module_loading import import_string
from django_tasks import DEFAULT_TASK_QUEUE_NAME, TaskContext, TaskResult, TaskResultStatus
from django_tasks.backends.base import BaseTaskBackend
from django_tasks.base import TASK_REFRESH_ATTRS, Task, TaskError
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
from django_tasks.signals import task_enqueued, task_finished, task_started
from django_tasks.utils import get_exception_traceback, get_module_path, normalize_json
from rest_framework import serializers

from queues import errors
from queues.conf import conf
from queues.core import registry, services
from queues.core.schemas import UserlessJobData
from queues.errors import JobValidationError, PermanentJobError
from queues.execution import coroutines
from queues.models import Job

JOB_TYPE_PREFIX = "django_task."

# Our statuses as django.tasks sees them; our own stays on `QueueTaskResult.job_status`.
STATUSES = {
    Job.Status.QUEUED: TaskResultStatus.READY,
    Job.Status.RETRYING: TaskResultStatus.READY,
    Job.Status.RUNNING: TaskResultStatus.RUNNING,
    Job.Status.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    Job.Status.FAILED: TaskResultStatus.FAILED,
    Job.Status.CANCELLED: TaskResultStatus.FAILED,
}


def job_type_for(queue):
    """The job type that runs tasks on our queue `queue`."""
    return f"{JOB_TYPE_PREFIX}{queue}"


def broker_priority(task_priority):
    """django.tasks' priority (-100..100, higher first) as our broker's claim rank (lower first).

    The app's own job types rank 0 and client-enqueued ones 1, so a task of the default priority
    0 is claimed with the app's own jobs, -1 with clients' ones, and a positive one before both.
    """
    return -task_priority


def resolve_task(path):
    """The module-level `@task` at dotted `path`, or InvalidTaskError."""
    try:
        found = import_string(path)
    except ImportError as exc:
        raise InvalidTaskError(f"{path!r} cannot be imported: {exc}") from exc
    if not isinstance(found, Task):
        raise InvalidTaskError(f"{path!r} is not a @task function")
    return found


def periodic_firing(entry):
    """(job type, data) of a `QUEUE_SCHEDULES` entry naming a task (`{"task": "app.tasks.f",
    "args": [...], "kwargs": {...}, ...}`): what its backend's `enqueue` would store, or
    InvalidTaskError (`queues.core.periodic`)."""
    from django_tasks import task_backends

    task = resolve_task(entry["task"])
    backend = task_backends[task.backend]
    if not isinstance(backend, QueueBackend):
        raise InvalidTaskError(f"{entry['task']!r} runs on backend {task.backend!r}, not ours")
    args, kwargs = entry.get("args", []), entry.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not is_json([args, kwargs]):
        raise InvalidTaskError("a periodic task's args must be a JSON list and kwargs a dict")
    data = {
        "task": task.module_path,
        "args": args,
        "kwargs": kwargs,
        "backend": backend.alias,
        "queue_name": task.queue_name,
        "priority": task.priority,
    }
    return job_type_for(backend.queue_map[task.queue_name]), data


def is_json(value):
    """Whether `value` comes back from JSON unchanged (no NaN, non-string keys, tuples, NUL)."""
    try:
        dumped = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return json.loads(dumped) == value and "\\u0000" not in dumped  # PostgreSQL refuses NUL


class TaskData(UserlessJobData):
    """What a task job stores: the task's path and JSON arguments, and how it was enqueued."""

    task = serializers.RegexField(re.compile(r"^[A-Za-z_][\w.]{0,254}$"))
    args = serializers.JSONField()
    kwargs = serializers.JSONField()
    backend = serializers.CharField(max_length=64)
    queue_name = serializers.CharField(max_length=64)
    priority = serializers.IntegerField(min_value=-100, max_value=100)

    def validate_task(self, value):
        try:
            resolve_task(value)
        except InvalidTaskError as exc:
            raise serializers.ValidationError(str(exc)) from exc
        return value

    def validate_args(self, value):
        if not isinstance(value, list) or not is_json(value):
            raise serializers.ValidationError("must be a list of JSON values")
        return value

    def validate_kwargs(self, value):
        if not isinstance(value, dict) or not is_json(value):
            raise serializers.ValidationError("must be an object of JSON values")
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueTaskResult(TaskResult):
    """A `TaskResult` read from our job record, with what django.tasks has no word for."""

    job_status: str
    """Our own status (`queues.models.Job.Status`): queued, retrying, cancelled..."""

    job_attempts: int

    @property
    def attempts(self):
        # The record keeps the last attempt's worker only, not one per attempt.
        return self.job_attempts

    def refresh(self):
        self._take(self.task.get_backend().get_result(self.id))

    async def arefresh(self):
        self._take(await self.task.get_backend().aget_result(self.id))

    def _take(self, fresh):
        for attr in TASK_REFRESH_ATTRS | {"job_status", "job_attempts"}:
            object.__setattr__(self, attr, getattr(fresh, attr))


def exception_path(job):
    """The dotted path of the job's last error class, read from its traceback's last line that
    names it (the record keeps only the class name); builtins as `builtins.X`."""
    name = job.last_error_class
    lines = re.findall(rf"^((?:\w+\.)*{re.escape(name)})(?::|$)", job.traceback, re.MULTILINE)
    if lines:
        return lines[-1] if "." in lines[-1] else f"builtins.{name}"
    return f"{errors.__name__}.{name}" if hasattr(errors, name) else name


def result_from_job(job, task=None, **changes):
    """The `QueueTaskResult` of `job`, a task job; `changes` override fields (the worker's
    view of an attempt that has not been recorded yet)."""
    data = job.data
    if task is None:
        task = resolve_task(data["task"]).using(
            priority=data["priority"], queue_name=data["queue_name"], backend=data["backend"]
        )
    job_errors = []
    if job.last_error_class:
        job_errors.append(
            TaskError(exception_class_path=exception_path(job), traceback=job.traceback)
        )
    result = QueueTaskResult(
        task=task,
        id=str(job.pk),
        status=STATUSES[job.status],
        enqueued_at=job.created_at,
        started_at=job.started_at,
        last_attempted_at=job.started_at,
        finished_at=job.finished_at,
        # Erasure may have removed them (`content_fields`).
        args=data.get("args", []),
        kwargs=data.get("kwargs", {}),
        backend=data["backend"],
        errors=job_errors,
        worker_ids=[job.worker] if job.worker else [],
        job_status=str(job.status),
        job_attempts=job.attempts,
    )
    object.__setattr__(result, "_return_value", job.result)
    for attr, value in changes.items():
        object.__setattr__(result, attr, value)
    return result


class QueueBackend(BaseTaskBackend):
    """Runs `@task` functions as jobs of our queue (docs/tasks.md)."""

    supports_defer = True
    supports_async_task = True  # awaited by the worker, as async job handlers are
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias, params):
        super().__init__(alias, params)
        if "QUEUES" in params:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]: {type(self).__name__} maps task queue names to our queues "
                'with OPTIONS {"QUEUES": {name: queue}}, not a QUEUES list.'
            )
        self.queue_map = self.options.get("QUEUES") or {
            **{queue: queue for queue in conf.QUEUES},
            DEFAULT_TASK_QUEUE_NAME: conf.DEFAULT_QUEUE,
        }
        for name, queue in self.queue_map.items():
            if queue not in conf.QUEUES:
                raise ImproperlyConfigured(
                    f"TASKS[{alias!r}]['OPTIONS']['QUEUES'] sends task queue {name!r} to "
                    f"{queue!r}, which is not in the QUEUES setting ({', '.join(conf.QUEUES)})."
                )
        self.queues = set(self.queue_map)

    def validate_task(self, task):
        if task.queue_name not in self.queue_map:
            raise InvalidTaskError(
                f"Queue {task.queue_name!r} is not valid for backend {self.alias!r}: it knows "
                f"{', '.join(sorted(self.queue_map))} (OPTIONS['QUEUES'])."
            )
        super().validate_task(task)

    def enqueue(self, task, args, kwargs):
        """Store the task's job in the caller's transaction; `task_enqueued` follows its commit."""
        self.validate_task(task)
        if getattr(resolve_task(task.module_path), "func", None) is not task.func:
            raise InvalidTaskError(f"{task.module_path!r} is not the module-level @task it names")
        try:
            args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        except (TypeError, ValueError) as exc:
            raise InvalidTaskError(f"task arguments must be JSON: {exc}") from exc
        queue = self.queue_map[task.queue_name]
        data = {
            "task": task.module_path,
            "args": args,
            "kwargs": kwargs,
            "backend": self.alias,
            "queue_name": task.queue_name,
            "priority": task.priority,
        }
        try:
            job = services.enqueue(job_type_for(queue), data, run_after=task.run_after)
        except JobValidationError as exc:
            raise InvalidTaskError(str(exc)) from exc
        result = result_from_job(job, task)
        transaction.on_commit(lambda: task_enqueued.send(type(self), task_result=result))
        return result

    def get_result(self, result_id):
        job = (
            Job.objects.filter(pk=result_id, job_type__startswith=JOB_TYPE_PREFIX).first()
            if _is_uuid(result_id)
            else None
        )
        if job is None:
            raise TaskResultDoesNotExist(result_id)
        return result_from_job(job)


def _is_uuid(value):
    try:
        Job._meta.pk.to_python(value)
    except ValidationError:
        return False
    return True


def run_task(data, job):
    """The handler of every `django_task.<queue>` job: one attempt of the task.

    `task_started` is sent before the call; `task_finished` once the success commits, or as a
    failed attempt ends, with the status it leaves: FAILED, or READY when it will be retried.
    """
    try:
        task = resolve_task(data["task"])
    except InvalidTaskError as exc:
        raise PermanentJobError(str(exc)) from exc
    task = task.using(
        priority=data["priority"], queue_name=data["queue_name"], backend=data["backend"]
    )
    sender = type(task.get_backend())
    # The record itself: a result carries times the running job's snapshot does not.
    job = Job.objects.get(pk=job.id)
    started = result_from_job(job, task)
    task_started.send(sender, task_result=started)
    args = [TaskContext(task_result=started), *data["args"]] if task.takes_context else data["args"]
    try:
        if iscoroutinefunction(task.func):
            # Awaited as an async handler is, so the queue's timeout reaches it.
            value = coroutines.run(task.func(*args, **data["kwargs"]))
        else:
            value = task.call(*args, **data["kwargs"])
        value = normalize_json(value)
    except errors.Snooze:  # waits again: neither finished nor failed
        raise
    except Exception as exc:
        policy = registry.get(job.queue, job.job_type).retry_policy
        retried = policy.retries(exc) and job.attempts < job.max_attempts
        failed = replace(
            started,
            status=TaskResultStatus.READY if retried else TaskResultStatus.FAILED,
            errors=[
                TaskError(
                    exception_class_path=get_module_path(type(exc)),
                    traceback=get_exception_traceback(exc),
                )
            ],
        )
        task_finished.send(sender, task_result=failed)
        raise
    succeeded = replace(started, status=TaskResultStatus.SUCCESSFUL)
    object.__setattr__(succeeded, "_return_value", value)
    transaction.on_commit(lambda: task_finished.send(sender, task_result=succeeded))
    return value


def register_job_types():
    """One task job type per queue of ours (each type names its queue)."""
    for queue in conf.QUEUES:
        registry.register(
            job_type_for(queue),
            queue=queue,
            schema=TaskData,
            subject=lambda data, result=None: f"task:{data['task']}"[:128],
            # Arguments and return values may carry anything: shown to nobody but code, erased
            # like content.
            content_fields=("args", "kwargs"),
            output_is_content=True,
            rank=lambda data: broker_priority(data["priority"]),
        )(run_task)
