"""`django.tasks` on our queue (queues.extras.task_backend): `@task` functions as jobs, on
PostgreSQL.

The first tests enqueue in-process; the others run the tasks through real `qcluster` processes.
"""

import itertools
import json
import re
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone
from django_q.models import OrmQ
from django_tasks import TaskResultStatus, default_task_backend, task
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
from django_tasks.signals import task_enqueued, task_finished
from rest_framework.test import APIClient

from queues.api import enqueue
from queues.core.services import scrub_jobs
from queues.errors import JobValidationError
from queues.execution.runner import run_job
from queues.extras.task_backend import QueueBackend
from queues.models import Job
from tests.support import tasks
from tests.support.cluster import wait_for

pytestmark = [pytest.mark.postgres]


@pytest.fixture
def enqueued_signals():
    sent = []

    def receiver(sender, task_result, **kwargs):
        sent.append(task_result.id)

    task_enqueued.connect(receiver, weak=False, dispatch_uid="test_task_backend")
    yield sent
    task_enqueued.disconnect(dispatch_uid="test_task_backend")


def broker_priority(result):
    """The claim rank of the task's broker row (a column django-q2's model does not know)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT priority FROM {OrmQ._meta.db_table} WHERE id = %s",
            [Job.objects.get(pk=result.id).broker_row],
        )
        return cursor.fetchone()[0]


# --- Enqueueing, in-process -------------------------------------------------------------------


@pytest.mark.django_db
def test_enqueue_stores_a_userless_job_and_get_result_reads_it(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        result = tasks.add.enqueue(2, b=3)

    job = Job.objects.get(pk=result.id)
    assert (job.queue, job.job_type, job.user_id, job.status) == (
        "database",
        "django_task.database",
        None,
        "queued",
    )
    assert job.data["task"] == "tests.support.tasks.add"
    assert (job.data["args"], job.data["kwargs"]) == ([2], {"b": 3})
    fetched = default_task_backend.get_result(result.id)
    assert (fetched.status, fetched.job_status, fetched.attempts) == (
        TaskResultStatus.READY,
        "queued",
        0,
    )
    assert (fetched.args, fetched.kwargs, fetched.enqueued_at) == ([2], {"b": 3}, job.created_at)
    assert tasks.add.get_result(result.id).id == result.id
    with pytest.raises(ValueError, match="not finished"):
        _ = fetched.return_value


@pytest.mark.django_db
def test_every_job_status_maps_to_a_task_status():
    result = tasks.add.enqueue(1, 1)
    expected = {
        "queued": TaskResultStatus.READY,
        "retrying": TaskResultStatus.READY,
        "running": TaskResultStatus.RUNNING,
        "succeeded": TaskResultStatus.SUCCESSFUL,
        "failed": TaskResultStatus.FAILED,
        "cancelled": TaskResultStatus.FAILED,
    }
    assert set(expected) == set(Job.Status.values)
    for status, task_status in expected.items():
        Job.objects.filter(pk=result.id).update(status=status)
        fetched = default_task_backend.get_result(result.id)
        assert (fetched.status, fetched.job_status) == (task_status, status)


@pytest.mark.django_db
def test_priority_maps_onto_the_broker_rank_around_the_apps_own_jobs():
    # Claimed lowest rank first: the app's own jobs rank 0, client-enqueued ones 1.
    assert broker_priority(tasks.tagged.enqueue("x")) == 0
    assert broker_priority(tasks.tagged.using(priority=100).enqueue("x")) == -100
    assert broker_priority(tasks.tagged.using(priority=-1).enqueue("x")) == 1
    assert broker_priority(tasks.tagged.using(priority=-100).enqueue("x")) == 100


@pytest.mark.django_db
def test_a_rolled_back_transaction_withdraws_the_task(
    django_capture_on_commit_callbacks, enqueued_signals
):
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            withdrawn = tasks.add.enqueue(1, 2)
            raise RuntimeError("the caller's change failed")
        kept = tasks.add.enqueue(3, 4)

    assert list(Job.objects.values_list("id", flat=True)) == [Job.objects.get(pk=kept.id).pk]
    assert OrmQ.objects.count() == 1
    assert enqueued_signals == [kept.id]
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(withdrawn.id)


@pytest.mark.django_db
def test_task_enqueued_is_sent_when_the_enqueueing_transaction_commits(
    django_capture_on_commit_callbacks, enqueued_signals
):
    with django_capture_on_commit_callbacks() as callbacks:
        result = tasks.add.enqueue(1, 2)
    assert enqueued_signals == []
    for callback in callbacks:
        callback()
    assert enqueued_signals == [result.id]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [[timezone.now()], [float("nan")], [{1: "non-string key"}], ["nul \x00"], [object()]],
)
def test_arguments_that_are_not_json_are_refused_and_nothing_is_stored(args):
    with pytest.raises(InvalidTaskError, match="JSON"):
        tasks.tagged.enqueue(*args)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_only_module_level_registered_tasks_are_enqueued():
    unnamed = task(tasks.not_a_task)  # a Task, but its path names the plain function
    with pytest.raises(InvalidTaskError, match="not_a_task"):
        unnamed.enqueue()
    data = {"task": "tests.support.tasks.not_a_task", "args": [], "kwargs": {}}
    data.update(backend="default", queue_name="default", priority=0)
    with pytest.raises(JobValidationError, match="not a @task"):
        enqueue("django_task.database", data)
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_unknown_queue_names_are_refused_clearly():
    with pytest.raises(InvalidTaskError, match=r"'emails' is not valid.*database, default"):
        tasks.tagged.using(queue_name="emails")
    with pytest.raises(ImproperlyConfigured, match="'emails' to 'nowhere'"):
        QueueBackend("default", {"OPTIONS": {"QUEUES": {"emails": "nowhere"}}})
    with pytest.raises(ImproperlyConfigured, match="not a QUEUES list"):
        QueueBackend("default", {"QUEUES": ["default"]})
    mapped = QueueBackend("default", {"OPTIONS": {"QUEUES": {"emails": "database"}}})
    assert mapped.queues == {"emails"}


@pytest.mark.django_db
@pytest.mark.parametrize("result_id", ["0" * 32, "not-a-uuid", ""])
def test_get_result_of_an_unknown_id_raises(result_id):
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(result_id)


@pytest.mark.django_db
def test_get_result_ignores_jobs_that_are_not_tasks(user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(str(job.pk))


@pytest.mark.django_db
def test_task_arguments_are_content_redacted_for_operators_and_erased_with_a_gone_subject(
    operator_api,
):
    result = tasks.about_nothing.enqueue(secret="marker-1234")
    shown = operator_api.get(f"/api/queues/jobs/{result.id}").json()["data"]
    assert (shown["args"], shown["kwargs"]) == ("[2 chars]", "[25 chars]")

    run_job(result.id)

    job = Job.objects.get(pk=result.id)
    assert job.status == "failed" and "marker-1234" not in json.dumps(job.data)
    fetched = default_task_backend.get_result(result.id)
    assert (fetched.status, fetched.args, fetched.kwargs) == (TaskResultStatus.FAILED, [], {})
    assert fetched.errors[0].exception_class_path == "queues.errors.SubjectGone"


@pytest.mark.django_db
def test_a_task_return_value_is_content_redacted_for_job_viewers_and_erased(
    operator_api, operator_user
):
    result = tasks.tagged.enqueue("marker-5678 of someone")
    run_job(result.id)

    shown = operator_api.get(f"/api/queues/jobs/{result.id}").json()
    assert (shown["status"], shown["result"]) == ("succeeded", "[22 chars]")
    admin = Client()
    admin.force_login(operator_user)
    page = admin.get(f"/admin/queues/job/{result.id}/change/").content.decode()
    assert "[22 chars]" in page and "marker-5678" not in page
    assert default_task_backend.get_result(result.id).return_value == "marker-5678 of someone"

    scrub_jobs(Job.objects.get(pk=result.id).subject)
    job = Job.objects.get(pk=result.id)
    assert job.result is None and "marker-5678" not in json.dumps(job.data)


@pytest.mark.django_db
def test_a_task_error_text_is_content_too_but_its_class_is_shown(operator_api, operator_user):
    result = tasks.fails_saying.enqueue("marker-9012")
    run_job(result.id)

    shown = operator_api.get(f"/api/queues/jobs/{result.id}").json()
    assert (shown["status"], shown["last_error_class"]) == ("failed", "PermanentJobError")
    assert shown["last_error"] == "[28 chars]"
    web = Client()
    web.force_login(operator_user)
    for page in (
        f"/admin/queues/job/{result.id}/change/",
        "/dashboard/queues",
        "/dashboard/queues/jobs?status=failed",
    ):
        content = web.get(page).content.decode()
        assert "PermanentJobError" in content and "marker-9012" not in content, page
    assert "marker-9012" in default_task_backend.get_result(result.id).errors[0].traceback


@pytest.mark.django_db
def test_the_apps_own_job_types_still_require_a_user():
    with pytest.raises(JobValidationError, match="user_id"):
        enqueue("test_sleep", {})


# --- Through real clusters ----------------------------------------------------------------


def signals_in(cluster, result):
    """(signal, status, attempts) of each task signal the cluster's workers logged for `result`."""
    pattern = rf"signal (task_\w+) {result.id} (\w+) attempts=(\d+)"
    return [(name, status, int(n)) for name, status, n in re.findall(pattern, cluster.log)]


def finished(result, timeout=60):
    def done():
        result.refresh()
        return result.is_finished

    wait_for(done, timeout, message=f"task {result.id}")
    return result


@pytest.mark.cluster
def test_a_task_runs_in_qcluster_and_its_return_value_is_read_back(cluster):
    cluster.start()
    result = tasks.add.enqueue(2, 3)
    later = tasks.add_later.enqueue(4, 5)

    finished(result)
    assert (result.status, result.job_status, result.return_value) == (
        TaskResultStatus.SUCCESSFUL,
        "succeeded",
        {"sum": 5},
    )
    assert result.attempts == 1 and result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert len(result.worker_ids) == 1
    assert finished(later).return_value == 9  # async functions run to completion
    metrics = Client().get("/metrics").content.decode()
    labels = '{job_type="django_task.database",queue="database"}'
    assert f"slimy_jobs_succeeded_total{labels} 2.0" in metrics
    assert signals_in(cluster.clusters[0], result) == [
        ("task_started", "RUNNING", 1),
        ("task_finished", "SUCCESSFUL", 1),
    ]


@pytest.mark.cluster
def test_a_failing_task_is_retried_with_backoff_then_fails(cluster):
    cluster.start()
    doomed = tasks.flaky.enqueue(fail_times=5)
    recovers = tasks.flaky.enqueue(fail_times=1)
    starts = []

    def observe():
        job = Job.objects.get(pk=doomed.id)
        if job.started_at and job.started_at not in starts:
            starts.append(job.started_at)
        return job.is_finished

    wait_for(observe, 30, interval=0.02, message="flaky task")
    finished(doomed)
    assert (doomed.status, doomed.job_status, doomed.attempts) == (
        TaskResultStatus.FAILED,
        "failed",
        3,
    )
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    # Never before its backoff (2 s, then 4 s, each -10% at most); after it by no more than a
    # loaded machine's delay.
    assert len(gaps) == 2 and 1.8 <= gaps[0] < 5.0 and 3.6 <= gaps[1] < 7.0, gaps
    (error,) = doomed.errors
    assert error.exception_class_path == "django.db.utils.OperationalError"
    assert "simulated outage on attempt 3" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        _ = doomed.return_value

    assert (finished(recovers).status, recovers.return_value) == (TaskResultStatus.SUCCESSFUL, 2)
    assert recovers.errors[0].exception_class_path == "django.db.utils.OperationalError"

    # A failed attempt's `task_finished` tells whether it will be retried (READY) or not.
    assert signals_in(cluster.clusters[0], doomed) == [
        ("task_started", "RUNNING", 1),
        ("task_finished", "READY", 1),
        ("task_started", "RUNNING", 2),
        ("task_finished", "READY", 2),
        ("task_started", "RUNNING", 3),
        ("task_finished", "FAILED", 3),
    ]


@pytest.mark.cluster
def test_a_task_that_overruns_its_queues_timeout_is_cut_off_and_retried(cluster):
    cluster.start(timeout=1)
    result = finished(tasks.sleepy.enqueue(30))
    assert (result.status, result.attempts) == (TaskResultStatus.FAILED, 3)
    assert result.errors[0].exception_class_path == "queues.errors.JobTimeout"


@pytest.mark.cluster
def test_a_deferred_task_waits_for_its_time(cluster):
    cluster.start()
    run_after = timezone.now() + timedelta(seconds=5)
    result = tasks.tagged.using(run_after=run_after).enqueue("deferred")
    soon = tasks.tagged.enqueue("now")

    finished(soon)
    status = default_task_backend.get_result(result.id).status
    # On a loaded machine the cluster may start after the deferred time: then only the start
    # time below tells.
    if timezone.now() < run_after:
        assert status == TaskResultStatus.READY
    assert finished(result).return_value == "deferred"
    assert result.started_at >= run_after


@pytest.mark.cluster
def test_higher_priority_tasks_run_first(cluster):
    # Four tasks: a fresh cluster claims its first three rows by priority, and the fourth is the
    # oldest due one whatever its priority (docs/job-queue.md, "Priorities"), here the last left.
    with transaction.atomic():  # all waiting before the one worker claims any
        results = [
            tasks.tagged.using(priority=priority).enqueue(priority) for priority in (-50, 0, 50, 10)
        ]
    cluster.start(workers=1)
    for result in results:
        finished(result)
    order = [r.return_value for r in sorted(results, key=lambda r: r.started_at)]
    assert order == [50, 10, 0, -50]


@pytest.mark.cluster
def test_a_rolled_back_task_never_runs(cluster):
    cluster.start()
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.tagged.enqueue("withdrawn")
        raise RuntimeError("the caller's change failed")
    kept = tasks.tagged.enqueue("kept")
    finished(kept)
    assert [job.data["args"] for job in Job.objects.all()] == [["kept"]]
    assert "withdrawn" not in cluster.clusters[0].log


@pytest.mark.cluster
def test_an_operator_retries_a_failed_task_from_the_admin(cluster, operator_user):
    cluster.start()
    result = finished(tasks.fails_once.enqueue())
    assert (result.status, result.attempts) == (TaskResultStatus.FAILED, 1)
    assert result.errors[0].exception_class_path == "queues.errors.PermanentJobError"

    session = APIClient()
    session.force_login(operator_user)
    action = {"action": "retry_selected", "_selected_action": [result.id]}
    assert session.post("/admin/queues/job/", action).status_code == 302

    def succeeded():
        result.refresh()
        return result.status == TaskResultStatus.SUCCESSFUL

    wait_for(succeeded, 30, message="retried task")
    assert (result.return_value, result.attempts, result.job_status) == (2, 2, "succeeded")


@pytest.mark.django_db(transaction=True)
def test_a_task_that_snoozes_waits_again_and_is_not_finished():
    result = tasks.snoozes.enqueue(30)
    statuses = []

    def finished(sender, task_result, **kwargs):
        statuses.append(task_result.status)

    task_finished.connect(finished)
    try:
        run_job(result.id)
    finally:
        task_finished.disconnect(finished)

    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts) == ("queued", 0)
    assert statuses == []
    assert default_task_backend.get_result(result.id).status == TaskResultStatus.READY
