"""Database connections lost under real `qcluster` processes: every process carries on at its next
use, and new work starts at once.

A server ends sessions on a restart, a failover, `pg_terminate_backend` or a proxy closing idle
connections. The clusters here run with `QUEUE_STRANDED_AFTER` far above the bounds asserted, so
a rescue of stranded jobs cannot be what brings the work through: only the processes' own
reconnecting can. Every new job must succeed on its first attempt (none lost, none doubled).
"""

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from queues.api import enqueue
from queues.django_q2.heartbeats import HEARTBEAT
from queues.engine import reconnect
from queues.engine.statements import hot_cursor
from queues.execution.runner import run_job
from queues.models import ClusterHeartbeat, Job
from tests.support.cluster import KEEP_ALL_JOBS, database_session, wait_for
from tests.support.jobs import wait_for_jobs
from tests.support.redis_queue import ON_REDIS

pytestmark = [pytest.mark.postgres, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

# A stranded job would be pushed again after 100 s: far beyond every bound below.
NO_RESCUE = {"QUEUE_STRANDED_AFTER": "100", **KEEP_ALL_JOBS}
# Seconds new work may take after the fault: generous on two shared cores, yet a fifth of the
# time a rescue would take.
NEW_WORK_WITHIN = 20
WORKERS = 4


def sleeping_jobs(user, count, seconds=0.0):
    return [
        enqueue("test_sleep", {"user_id": user.pk, "seconds": seconds}).pk for _ in range(count)
    ]


def warm_up(user):
    """Run enough jobs that every worker holds a connection (the pusher and sentinel do)."""
    wait_for_jobs(sleeping_jobs(user, 3 * WORKERS, seconds=0.2), timeout=60)


def cut_every_connection():
    """Terminate every session of the test database but this process's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        cut = cursor.fetchone()[0]
    assert cut >= WORKERS + 2, f"only {cut} sessions: the cluster's are not all open"
    return timezone.now()


def assert_new_work_runs_at_once(user, count=2 * WORKERS):
    """`count` new jobs all succeed within NEW_WORK_WITHIN seconds, each on one attempt."""
    jobs = wait_for_jobs(sleeping_jobs(user, count), timeout=NEW_WORK_WITHIN, interval=0.1)
    assert [(job.status, job.attempts) for job in jobs] == [("succeeded", 1)] * count


def assert_heartbeat_after(moment):
    """The cluster writes its heartbeat again (at least every HEARTBEAT seconds when idle)."""
    wait_for(
        lambda: ClusterHeartbeat.objects.filter(seen_at__gt=moment).exists(),
        HEARTBEAT + 5,
        message="a heartbeat written after the fault",
    )


def test_a_worker_whose_connection_was_cut_begins_the_job_on_a_fresh_one(user):
    (job_id,) = sleeping_jobs(user, 1)
    with hot_cursor() as cursor:  # the cursor a worker keeps, on the connection about to die
        cursor.execute("SELECT 1")
    doomed = connection.connection
    with database_session(autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [doomed.info.backend_pid])
    run_job(job_id)
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert connection.connection is not doomed
    assert connection._queues_hot_cursor[0] is connection.connection  # kept on the new one


def test_the_sentinel_notices_a_connection_closed_while_idle_without_a_round_trip():
    connection.ensure_connection()
    with CaptureQueriesContext(connection) as queries:
        assert not reconnect.drop_if_hung_up()
    assert not queries.captured_queries
    doomed = connection.connection
    with database_session(autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [doomed.info.backend_pid])
    wait_for(lambda: reconnect.drop_if_hung_up(), 5, message="the hang-up noticed")
    with connection.cursor() as cursor:  # a fresh connection
        cursor.execute("SELECT 1")
    assert connection.connection is not doomed


@pytest.mark.parametrize("broker", ["database", "redis"])
def test_new_work_starts_at_once_after_idle_connections_are_cut(request, cluster, user, broker):
    env = NO_RESCUE
    if broker == "redis":
        request.getfixturevalue("redis_queue")
        env = {**ON_REDIS, **NO_RESCUE}
    qcluster = cluster.start(workers=WORKERS, timeout=10, extra_env=env)
    warm_up(user)
    time.sleep(1)  # idle: the pusher waits, every worker waits for a task
    cut_at = cut_every_connection()
    assert_new_work_runs_at_once(user)
    assert_heartbeat_after(cut_at)
    assert "Failed to pull task from broker" not in qcluster.log  # the pusher never died


def test_new_work_starts_at_once_after_busy_connections_are_cut(cluster, user):
    cluster.start(workers=WORKERS, timeout=10, extra_env=NO_RESCUE)
    warm_up(user)
    busy = sleeping_jobs(user, WORKERS, seconds=2)
    wait_for(
        lambda: Job.objects.filter(pk__in=busy, status="running").count() == WORKERS,
        30,
        message="every worker busy",
    )
    cut_at = cut_every_connection()
    assert_new_work_runs_at_once(user)
    assert_heartbeat_after(cut_at)
    # The interrupted attempts were real ones: each counted once, and retried.
    interrupted = wait_for_jobs(busy, timeout=60)
    assert [(job.status, job.attempts) for job in interrupted] == [("succeeded", 2)] * WORKERS


def test_new_work_starts_at_once_after_a_postgresql_restart_while_idle(
    on_throwaway_server, cluster, user
):
    cluster.start(workers=WORKERS, timeout=10, extra_env=NO_RESCUE)
    warm_up(user)
    time.sleep(1)
    on_throwaway_server.restart()
    connection.close()  # ours died with the server; the next query opens a fresh one
    restarted_at = timezone.now()
    assert_new_work_runs_at_once(user)
    assert_heartbeat_after(restarted_at)


def test_a_cluster_started_before_its_database_waits_for_it_then_works(
    on_throwaway_server, cluster, user
):
    (job_id,) = sleeping_jobs(user, 1)
    on_throwaway_server.stop()
    connection.close()
    qcluster = cluster.start(workers=2, timeout=10, extra_env=NO_RESCUE, wait=False)
    wait_for(lambda: qcluster.log.count("Database unreachable") >= 3, 30, message="retries")
    assert qcluster.process.poll() is None, qcluster.log
    on_throwaway_server.start()
    (job,) = wait_for_jobs([job_id], timeout=NEW_WORK_WITHIN)
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert "Database reachable after" in qcluster.log
