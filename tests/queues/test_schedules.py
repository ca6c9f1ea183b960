"""Periodic tasks: declared in one list (queues' maintenance + settings.QUEUE_SCHEDULES), synced
into django-q2's Schedule table by `migrate`, and run by a real `qcluster`."""

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from chat.models import Conversation
from queues.maintenance.schedules import MAINTENANCE
from queues.models import ScheduleFailureCounter
from tests.support.cluster import wait_for
from tests.support.schedules import has_run

SWEEPER = "chat: re-queue stalled conversation deletions"


def migrate():
    call_command("migrate", verbosity=0)


def schedules():
    return {s.name: (s.func, s.schedule_type, s.minutes, s.cron) for s in Schedule.objects.all()}


@pytest.mark.django_db
def test_after_migrate_the_schedule_table_holds_exactly_the_declared_list():
    migrate()
    declared = [*MAINTENANCE, *django_settings.QUEUE_SCHEDULES]
    assert schedules() == {
        entry["name"]: (entry["func"], "I", entry.get("minutes", 1), None) for entry in declared
    }
    assert schedules()["queues: prune finished job records"][2] == 5
    assert SWEEPER in schedules()


@pytest.mark.django_db
def test_migrate_again_follows_a_changed_list_and_leaves_hand_made_schedules(settings):
    Schedule.objects.create(
        name="by hand", func="queues.maintenance.periodic.prune", schedule_type="I", minutes=7
    )
    settings.QUEUE_SCHEDULES = [
        {"name": SWEEPER, "func": "chat.sweeper.sweep_deletions", "minutes": 5},
        {
            "name": "stats",
            "func": "queues.maintenance.periodic.prune_minute_stats",
            "cron": "0 3 * * *",
        },
    ]
    migrate()
    assert schedules()[SWEEPER] == ("chat.sweeper.sweep_deletions", "I", 5, None)
    assert schedules()["stats"] == (
        "queues.maintenance.periodic.prune_minute_stats",
        "C",
        None,
        "0 3 * * *",
    )

    settings.QUEUE_SCHEDULES = []
    migrate()
    assert set(schedules()) == {entry["name"] for entry in MAINTENANCE} | {"by hand"}
    assert schedules()["by hand"] == ("queues.maintenance.periodic.prune", "I", 7, None)


@pytest.mark.django_db
def test_a_sync_keeps_one_row_per_declared_name_and_its_next_run(settings):
    migrate()
    later = timezone.now() + timedelta(minutes=30)
    Schedule.objects.filter(name=SWEEPER).update(next_run=later)
    migrate()
    migrate()
    assert Schedule.objects.filter(name=SWEEPER).count() == 1
    assert Schedule.objects.get(name=SWEEPER).next_run == later


def test_a_real_cluster_runs_the_declared_sweeper(cluster, user):
    """The sweeper's schedule, as synced, is picked up by django-q2's scheduler (about 30 s after
    a cluster starts) and the deletion it re-queues runs."""
    stalled = Conversation.objects.create(owner=user, title="its job was lost")
    Conversation.objects.filter(pk=stalled.pk).update(
        deletion_requested_at=timezone.now() - timedelta(minutes=10)
    )
    sweeper = Schedule.objects.filter(name=SWEEPER)
    assert sweeper.update(next_run=timezone.now() - timedelta(minutes=1)) == 1

    cluster.start()
    wait_for(
        lambda: not Conversation.objects.filter(pk=stalled.pk).exists(),
        90,
        message="the scheduled sweeper to re-queue the deletion and a worker to run it",
    )


def test_a_failing_or_broken_schedule_never_stops_the_others(cluster, client, operator_user):
    """One pass of a real cluster's scheduler: a cron expression croniter cannot read (made by
    hand, past the admin's validation) and a function that raises are counted, shown and
    acknowledged; the cron schedule and every other one run."""
    due = timezone.now() - timedelta(minutes=1)
    mark = "tests.support.schedules.mark"
    broken = Schedule.objects.create(
        name="broken cron", func=mark, args="'broken'", schedule_type="C", cron="0 3 * * *"
    )
    Schedule.objects.filter(pk=broken.pk).update(cron="61 * * * *")  # as an old row may hold
    Schedule.objects.create(name="fails", func="tests.support.schedules.fail", minutes=1)
    Schedule.objects.create(
        name="cron", func=mark, args="'cron'", schedule_type="C", cron="* * * * *"
    )
    Schedule.objects.create(name="minutes", func=mark, args="'minutes'", minutes=1)
    Schedule.objects.update(next_run=due)  # the maintenance ones too
    started = timezone.now()

    cluster.start(workers=2)
    wait_for(
        lambda: has_run("cron") and has_run("minutes"),
        90,
        message="the healthy schedules to run (the scheduler passes about every 30 s)",
    )
    wait_for(lambda: ScheduleFailureCounter.objects.count() == 2, 30, message="2 failures")
    failures = {c.schedule: c for c in ScheduleFailureCounter.objects.all()}
    assert failures["broken cron"].failures == 1
    assert "CroniterBadCronError" in failures["broken cron"].last_error
    assert "a scheduled function that fails" in failures["fails"].last_error
    assert not has_run("broken")
    assert Schedule.objects.get(name="broken cron").next_run == due  # left as it was
    ran = Schedule.objects.exclude(name="broken cron")
    assert not ran.filter(next_run__lt=started).exists(), "every other schedule ran"
    wait_for(lambda: not OrmQ.objects.exists(), 30, message="every broker row acknowledged")

    metrics = client.get("/metrics").content.decode()
    assert 'slimy_schedule_failures_total{schedule="fails"} 1.0' in metrics
    assert 'slimy_schedule_failures_total{schedule="broken cron"} 1.0' in metrics
    client.force_login(operator_user)
    dashboard = client.get("/dashboard/queues").content.decode()
    assert 'data-schedule="broken cron"' in dashboard and 'data-schedule="fails"' in dashboard


def test_qcluster_refuses_to_start_with_a_cron_croniter_cannot_read(cluster):
    settings_module = {"DJANGO_SETTINGS_MODULE": "tests.support.bad_cron_settings"}
    refused = cluster.start(extra_env=settings_module, wait=False)
    assert refused.process.wait(60) != 0
    assert "(queues.E007)" in refused.log and "61 * * * *" in refused.log
