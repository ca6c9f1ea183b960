"""Priorities within a queue: urgent jobs are claimed before older ones, and none starves, on
PostgreSQL (one claim statement) and SQLite (django-q2's polled claim) alike."""

import statistics
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_q.conf import Conf

from queues.api import enqueue, enqueue_many
from queues.django_q2.broker import OLDEST_EVERY, JobBroker
from queues.engine.postgresql import CLAIM
from queues.errors import JobValidationError
from queues.models import Job
from tests.support.cluster import wait_for

LOW, HIGH = 9, 0


@pytest.mark.django_db(transaction=True)
def test_claims_go_by_priority_with_every_fourth_row_the_oldest(monkeypatch):
    monkeypatch.setattr(Conf, "BULK", 1)
    broker, now = JobBroker("database"), timezone.now()
    # Lows first (older), then highs; the app's own before clients' within one priority.
    for n in range(8):
        broker.enqueue(f"low{n}", run_after=now - timedelta(seconds=60 - n), priority=2 * LOW)
    for n in range(8):
        broker.enqueue(f"high{n}", run_after=now - timedelta(seconds=30 - n), priority=2 * HIGH)

    order = [broker.dequeue()[0][1] for _ in range(12)]
    assert OLDEST_EVERY == 4
    assert order == [
        *("high0", "high1", "high2", "low0"),
        *("high3", "high4", "high5", "low1"),
        *("high6", "high7", "low2", "low3"),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_claim_of_many_takes_its_share_oldest_first_in_the_same_statement(monkeypatch):
    monkeypatch.setattr(Conf, "BULK", 8)
    broker, now = JobBroker("database"), timezone.now()
    for n in range(8):
        broker.enqueue(f"low{n}", run_after=now - timedelta(seconds=60 - n), priority=2 * LOW)
    for n in range(8):
        broker.enqueue(f"high{n}", run_after=now - timedelta(seconds=30 - n), priority=2 * HIGH)

    claimed = sorted(payload for _, payload in broker.dequeue())
    assert claimed == sorted(["low0", "low1", *(f"high{n}" for n in range(6))])


@pytest.mark.postgres
@pytest.mark.django_db
def test_both_parts_of_the_claim_use_an_index():
    now = timezone.now()
    params = {"queue": "database", "now": now, "by_priority": 3, "oldest": 1}
    params["claimed_key"] = "database@1@1"
    with connection.cursor() as cursor:
        # A realistic backlog, with fresh statistics: the planner's choice, not a forced one.
        cursor.execute(
            "INSERT INTO django_q_ormq (key, payload, lock, priority)"
            " SELECT 'database', 'x', now() - n * interval '1 ms', mod(n, 10)"
            " FROM generate_series(1, 20000) n"
        )
        cursor.execute("ANALYZE django_q_ormq")
        cursor.execute(f"EXPLAIN {CLAIM}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "queues_ormq_priority_claim_idx" in plan and "queues_ormq_claim_idx" in plan, plan


@pytest.mark.django_db
def test_a_job_takes_its_types_priority_unless_the_enqueue_sets_one(user):
    default = enqueue("test_sleep", {"user_id": user.pk})
    urgent = enqueue("test_sleep", {"user_id": user.pk}, priority=HIGH)
    many = enqueue_many("test_sleep", [{"user_id": user.pk}], priority=LOW)
    assert (default.priority, urgent.priority, many[0].priority) == (0, HIGH, LOW)
    with pytest.raises(JobValidationError, match="priority"):
        enqueue("test_sleep", {"user_id": user.pk}, priority=10)
    with pytest.raises(JobValidationError, match=r"^priority"):
        enqueue_many("test_sleep", [{"user_id": user.pk}], priority=True)


@pytest.mark.django_db
def test_a_client_may_only_let_its_jobs_wait(api, settings):
    body = {"queue": "database", "type": "test_sleep", "data": {}}
    relaxed = api.post("/api/queues/jobs", {**body, "priority": 5}, format="json")
    assert relaxed.status_code == 202 and relaxed.json()["priority"] == 5
    out_of_range = api.post("/api/queues/jobs", {**body, "priority": -1}, format="json")
    assert out_of_range.status_code == 400 and "priority" in out_of_range.json()["fields"]
    # test_unique is declared priority 2: a client may not pass it to 1.
    unique = {"queue": "database", "type": "test_unique", "data": {"name": "n"}}
    passing = api.post("/api/queues/jobs", {**unique, "priority": 1}, format="json")
    assert passing.status_code == 400 and "priority" in passing.json()["fields"]
    assert api.post("/api/queues/jobs", unique, format="json").json()["priority"] == 2
    assert Job.objects.count() == 2


JOB_SECONDS = 0.02


@pytest.mark.postgres
@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_urgent_jobs_pass_a_backlog_and_the_backlog_still_moves(cluster, user):
    """300 low-priority jobs wait; then a trickle of urgent ones, then a flood of them.

    The trickle's jobs start within a few jobs' time though 300 older ones wait; during the
    flood, one claim in four still takes the oldest low job (strict priority would take none).
    """
    enqueue_many("test_sleep", [{"user_id": user.pk, "seconds": JOB_SECONDS}] * 300, priority=LOW)
    running = cluster.start(workers=2)
    wait_for(lambda: Job.objects.filter(status="succeeded").count() >= 10, 60, message="start")

    trickle = []
    for _ in range(20):
        trickle.append(enqueue("test_sleep", {"user_id": user.pk, "seconds": JOB_SECONDS}))
        time.sleep(0.1)
    wait_for(
        lambda: (
            Job.objects.filter(pk__in=[j.pk for j in trickle], status="succeeded").count()
            == len(trickle)
        ),
        60,
        message="the trickle",
    )
    trickle_waits = [
        (job.started_at - job.created_at).total_seconds()
        for job in Job.objects.filter(pk__in=[j.pk for j in trickle])
    ]
    # How many older low jobs each urgent one let start while it waited: counted by order of
    # starts, not by time.
    lows_passing = [
        Job.objects.filter(
            priority=LOW, started_at__gt=job.created_at, started_at__lt=job.started_at
        ).count()
        for job in Job.objects.filter(pk__in=[j.pk for j in trickle])
    ]
    lows_left = Job.objects.filter(priority=LOW).exclude(status="succeeded").count()

    flood = enqueue_many("test_sleep", [{"user_id": user.pk, "seconds": JOB_SECONDS}] * 200)
    flood_start = timezone.now()  # committed
    flood_ids = [job.pk for job in flood]
    wait_for(
        lambda: Job.objects.filter(pk__in=flood_ids, status="succeeded").count() == len(flood),
        120,
        message="the flood",
    )
    flood_end = Job.objects.filter(pk__in=flood_ids).latest("finished_at").finished_at
    lows_during_flood = Job.objects.filter(
        priority=LOW, started_at__gte=flood_start, started_at__lte=flood_end
    ).count()
    low_waits = [
        (job.started_at - job.created_at).total_seconds()
        for job in Job.objects.filter(priority=LOW, started_at__isnull=False)
    ]
    running.stop()

    print(
        f"\ntrickle waits: median {statistics.median(trickle_waits):.3f}s,"
        f" max {max(trickle_waits):.3f}s; older low jobs passing each: {lows_passing};"
        f" with {lows_left} older low jobs still waiting;"
        f" low jobs started during the flood of {len(flood)} urgent ones: {lows_during_flood}"
        f" ({(flood_end - flood_start).total_seconds():.1f}s);"
        f" longest low wait so far {max(low_waits):.1f}s"
    )
    assert lows_left > 100  # the trickle really passed a backlog
    # First come, first served would let every older low job pass; priority lets through only
    # those already claimed and the oldest-first share.
    assert max(lows_passing) < 20
    # One claimed row in four is the oldest: about 200 / 3 low jobs run during the flood (strict
    # priority: none), and not many more (the urgent ones keep the rest).
    share = len(flood) / (OLDEST_EVERY - 1)
    assert share / 2 <= lows_during_flood <= share * 1.5
