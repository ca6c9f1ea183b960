"""The broker on PostgreSQL: claims, NOTIFY on commit, acknowledgement with the outcome."""

import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signals import post_execute_in_worker, pre_execute

from queues.api import enqueue
from queues.django_q2.broker import JobBroker
from queues.engine.postgresql import CHANNEL
from queues.execution.runner import run_job
from queues.maintenance.rescuer import rescue
from queues.models import Job
from tests.support.jobs import wait_for_job


def raw_connection():
    return connection.get_new_connection(connection.get_connection_params())


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_claim_takes_due_rows_oldest_first_up_to_bulk_and_says_when_the_next_is_due(
    monkeypatch,
):
    monkeypatch.setattr(Conf, "BULK", 2)
    broker, now = JobBroker("database"), timezone.now()
    later = broker.enqueue("later", run_after=now + timedelta(seconds=60))
    second = broker.enqueue("second", run_after=now - timedelta(seconds=1))
    first = broker.enqueue("first", run_after=now - timedelta(seconds=2))
    third = broker.enqueue("third", run_after=now - timedelta(milliseconds=500))

    tasks, next_due, _ = broker._claim()
    assert tasks == [(first, "first"), (second, "second")]
    assert next_due == now + timedelta(seconds=60)

    assert broker._claim()[0] == [(third, "third")]
    tasks, next_due, _ = broker._claim()
    assert tasks == []  # claimed rows stay invisible until their timeout
    assert next_due == OrmQ.objects.get(pk=later).lock


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_claim_skips_rows_another_cluster_holds():
    broker = JobBroker("database")
    held = broker.enqueue("held", run_after=timezone.now() - timedelta(seconds=1))
    free = broker.enqueue("free")
    with raw_connection() as other:
        other.execute(f"SELECT id FROM {OrmQ._meta.db_table} WHERE id = %s FOR UPDATE", [held])
        # A claim that waited for the lock instead of skipping the row fails, not hangs.
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '10s'")
        try:
            assert broker._claim()[0] == [(free, "free")]
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        other.rollback()
    assert broker._claim()[0] == [(held, "held")]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_enqueue_wakes_listeners_when_its_transaction_commits():
    with raw_connection() as listener:
        listener.autocommit = True
        listener.execute(f"LISTEN {CHANNEL}")
        with transaction.atomic():
            JobBroker("database").enqueue("payload")
            assert list(listener.notifies(timeout=0.3, stop_after=1)) == []
        woken = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.payload for n in woken] == ["database"]


def deliver(job):
    """Run `job` the way a django-q2 worker does, around the signals; returns the task dict."""
    task = {"ack_id": OrmQ.objects.get().pk}
    pre_execute.send(sender="django_q", func=run_job, task=task)
    run_job(str(job.id))
    post_execute_in_worker.send(sender="django_q", func=run_job, task=task)
    return task


@pytest.mark.django_db(transaction=True)
def test_a_succeeded_job_took_its_broker_row_with_it_so_the_monitor_acknowledges_nothing(user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    task = deliver(job)
    assert Job.objects.get(pk=job.pk).status == "succeeded"
    assert "ack_id" not in task
    assert not OrmQ.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_failed_attempt_replaces_its_broker_row_with_the_retry(user):
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    first_row = OrmQ.objects.get().pk
    task = deliver(job)
    job.refresh_from_db()
    assert job.status == "retrying"
    assert "ack_id" not in task
    retry = OrmQ.objects.get()
    assert retry.pk != first_row and retry.lock == job.run_after


@pytest.mark.django_db(transaction=True)
def test_a_delivery_that_cannot_record_its_outcome_is_left_for_the_monitor(user, monkeypatch):
    job = enqueue("test_sleep", {"user_id": user.pk})
    monkeypatch.setattr(
        "queues.execution.runner.ensure_database",
        lambda: (_ for _ in ()).throw(RuntimeError("down")),
    )
    task = {"ack_id": OrmQ.objects.get().pk}
    pre_execute.send(sender="django_q", func=run_job, task=task)
    with pytest.raises(RuntimeError):
        run_job(str(job.id))
    post_execute_in_worker.send(sender="django_q", func=run_job, task=task)
    assert "ack_id" in task and OrmQ.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_rescuer_in_a_scheduled_task_acknowledges_no_delivery_for_the_attempt_it_fails(user):
    """It records a lost attempt's failure for a worker that is gone: the delivery this process
    runs (the maintenance task's) is not that attempt's, and stays for the monitor."""
    lost = enqueue("test_sleep", {"user_id": user.pk})
    Job.objects.filter(pk=lost.pk).update(
        status="running", attempts=1, started_at=timezone.now() - timedelta(days=1)
    )
    running_task = enqueue("test_sleep", {"user_id": user.pk}).broker_row  # stands for it
    task = {"ack_id": running_task}
    pre_execute.send(sender="django_q", func=rescue, task=task)
    assert rescue("database") == 1
    post_execute_in_worker.send(sender="django_q", func=rescue, task=task)

    assert Job.objects.get(pk=lost.pk).status == "retrying"
    assert "ack_id" in task and OrmQ.objects.filter(pk=running_task).exists()


@pytest.mark.postgres
@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_an_idle_cluster_starts_each_new_job_at_once_without_polling(cluster, user):
    cluster.start()
    delays = []
    for _ in range(4):
        job = enqueue("test_sleep", {"user_id": user.pk})
        done = wait_for_job(job.pk, timeout=10)
        delays.append((done.started_at - job.created_at).total_seconds())
        time.sleep(1)  # idle: the pusher waits on LISTEN (up to 5 s) rather than polling
    delays.pop(0)  # the first job may have met workers still starting
    # Woken by the notification: without it the pusher would sleep out the rest of its wait,
    # about 4 s. The bound leaves a loaded machine room and still tells the two apart.
    assert max(delays) < 2.0, delays
