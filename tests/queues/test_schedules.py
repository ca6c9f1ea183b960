"""Periodic jobs: declared beside their handlers or in settings.QUEUE_SCHEDULES, synced into
django-q2's Schedule table by `migrate`, fired as real jobs one per time slot, and run by a real
`qcluster`; hand-made schedules still run their functions."""

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from chat.models import Conversation
from queues.api import JobData, UserlessJobData, job_type
from queues.core import pausing, periodic, registry
from queues.core.periodic import FIRE, Periodic
from queues.django_q2.scheduler import run_due_schedules
from queues.execution.runner import run_job
from queues.models import Job, ScheduleFailureCounter
from tests.support.cluster import wait_for
from tests.support.jobs import counted
from tests.support.periodic_settings import PERIODIC
from tests.support.schedules import has_run

SWEEPER = "sweep_deletions"
# Declared beside their handlers: queues' upkeep and chat's sweeper.
BESIDE_HANDLERS = {"prune_job_records": 5, "redeliver_stranded_jobs": 1, SWEEPER: 1}
NAME = PERIODIC["name"]


def migrate():
    call_command("migrate", verbosity=0)


def schedules():
    return {
        s.name: (s.func, s.args, s.schedule_type, s.minutes, s.cron) for s in Schedule.objects.all()
    }


def at(moment):
    """The clock of the code under test, set to `moment`."""
    return mock.patch("django.utils.timezone.now", return_value=moment)


def scheduler_pass():
    """One pass of the cluster's scheduler, in the test's transaction (which it must not close)."""
    with mock.patch("queues.django_q2.scheduler.close_old_django_connections"):
        return run_due_schedules()


def jobs_of(job_type="test_periodic"):
    return Job.objects.filter(job_type=job_type)


@pytest.mark.django_db
def test_after_migrate_the_schedule_table_holds_exactly_the_declared_list():
    migrate()
    assert schedules() == {
        name: (FIRE, repr(name), "I", minutes, None) for name, minutes in BESIDE_HANDLERS.items()
    }


@pytest.mark.django_db
def test_migrate_again_follows_a_changed_list_and_leaves_hand_made_schedules(settings):
    Schedule.objects.create(
        name="by hand", func="queues.maintenance.periodic.prune", schedule_type="I", minutes=7
    )
    settings.QUEUE_SCHEDULES = [
        PERIODIC,
        {"name": "nightly", "job_type": "test_periodic", "cron": "0 3 * * *"},
        {"name": "legacy", "func": "queues.maintenance.periodic.prune_minute_stats", "minutes": 5},
    ]
    migrate()
    assert schedules()[NAME] == (FIRE, repr(NAME), "I", 1, None)
    assert schedules()["nightly"] == (FIRE, "'nightly'", "C", None, "0 3 * * *")
    assert schedules()["legacy"] == (FIRE, "'legacy'", "I", 5, None)

    settings.QUEUE_SCHEDULES = []
    migrate()
    assert set(schedules()) == set(BESIDE_HANDLERS) | {"by hand"}
    assert schedules()["by hand"][:2] == ("queues.maintenance.periodic.prune", None)


@pytest.mark.django_db
def test_a_sync_keeps_one_row_per_declared_name_and_its_next_run():
    migrate()
    later = timezone.now() + timedelta(minutes=30)
    Schedule.objects.filter(name=SWEEPER).update(next_run=later)
    migrate()
    migrate()
    assert Schedule.objects.filter(name=SWEEPER).count() == 1
    assert Schedule.objects.get(name=SWEEPER).next_run == later


@pytest.mark.django_db
def test_a_new_declaration_starts_at_its_next_slot_not_at_once(settings):
    settings.QUEUE_SCHEDULES = [PERIODIC]
    with at(datetime(2026, 3, 1, 12, 0, 40, tzinfo=UTC)):
        migrate()
    assert Schedule.objects.get(name=NAME).next_run == datetime(2026, 3, 1, 12, 1, tzinfo=UTC)


def test_interval_slots_are_aligned_on_the_epoch_and_cron_slots_on_the_expression(settings):
    settings.TIME_ZONE = "UTC"
    hourly = Periodic("hourly", "test_periodic", every=timedelta(hours=1))
    nightly = Periodic("nightly", "test_periodic", cron="0 3 * * *")
    now = datetime(2026, 3, 1, 12, 34, 56, tzinfo=UTC)
    assert hourly.latest_slot(now) == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert hourly.next_slot(hourly.latest_slot(now)) == datetime(2026, 3, 1, 13, tzinfo=UTC)
    assert nightly.latest_slot(now) == datetime(2026, 3, 1, 3, tzinfo=UTC)
    assert nightly.latest_slot(datetime(2026, 3, 1, 3, tzinfo=UTC)) == datetime(
        2026, 3, 1, 3, tzinfo=UTC
    )  # a slot has started at its very first instant
    assert nightly.next_slot(nightly.latest_slot(now)) == datetime(2026, 3, 2, 3, tzinfo=UTC)
    for every, cron in [
        (timedelta(seconds=30), None),
        (timedelta(seconds=90), None),
        (None, "61 * * * *"),
        (None, "0 3 * *"),
        (None, None),
    ]:
        with pytest.raises(ValueError):
            Periodic("bad", "test_periodic", every=every, cron=cron)


@pytest.mark.django_db
def test_clusters_firing_one_slot_store_one_job_and_the_next_slot_another(settings):
    settings.QUEUE_SCHEDULES = [PERIODIC]
    first = periodic.fire(NAME, datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC))
    again = periodic.fire(NAME, datetime(2026, 3, 1, 12, 0, 59, tzinfo=UTC))  # another cluster
    run_job(first.pk)  # whatever became of the slot's job
    late = periodic.fire(NAME, datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC))
    following = periodic.fire(NAME, datetime(2026, 3, 1, 12, 1, 2, tzinfo=UTC))

    assert again.pk == first.pk == late.pk and again.deduplicated and late.deduplicated
    assert following.pk != first.pk and not following.deduplicated
    assert jobs_of().count() == 2 and counted("enqueued", "test_periodic") == 2
    assert first.data["fail_times"] == 5 and first.request_id == "periodic:20260301T120000Z"


@pytest.mark.django_db
def test_a_scheduler_pass_fires_each_due_declaration_once_and_moves_it_to_its_next_slot(settings):
    settings.QUEUE_SCHEDULES = [PERIODIC]
    migrate()
    Schedule.objects.update(next_run=timezone.now() - timedelta(seconds=1))

    assert scheduler_pass() == 4
    assert scheduler_pass() == 0  # nothing due any more
    for name in [NAME, *BESIDE_HANDLERS]:
        schedule = Schedule.objects.get(name=name)
        assert schedule.next_run > timezone.now()
        assert Job.objects.get(pk=schedule.task).job_type == periodic.find(name).job_type
    assert jobs_of().count() == 1 and jobs_of(SWEEPER).count() == 1


@pytest.mark.django_db
def test_after_downtime_a_declaration_fires_its_latest_slot_once(settings):
    settings.QUEUE_SCHEDULES = [PERIODIC]
    migrate()
    down_since = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    Schedule.objects.filter(name=NAME).update(next_run=down_since)
    Schedule.objects.exclude(name=NAME).update(next_run=down_since + timedelta(days=1))
    back = datetime(2026, 3, 1, 12, 34, 56, tzinfo=UTC)

    with at(back):
        assert scheduler_pass() == 1
        assert scheduler_pass() == 0
    (job,) = jobs_of()
    assert job.request_id == "periodic:20260301T123400Z"  # the latest slot's, not 09:00's
    assert Schedule.objects.get(name=NAME).next_run == datetime(2026, 3, 1, 12, 35, tzinfo=UTC)


@pytest.mark.django_db
def test_a_declaration_that_cannot_fire_is_counted_and_left_due_and_the_others_fire(settings):
    settings.QUEUE_SCHEDULES = [PERIODIC]
    migrate()
    Schedule.objects.filter(name=NAME).update(args="'no longer declared'")
    due = timezone.now() - timedelta(seconds=1)
    Schedule.objects.update(next_run=due)

    assert scheduler_pass() == 3
    assert Schedule.objects.get(name=NAME).next_run == due
    failure = ScheduleFailureCounter.objects.get(schedule=NAME)
    assert failure.failures == 1 and "no longer declared" in failure.last_error
    assert not jobs_of().exists() and jobs_of(SWEEPER).exists()


@pytest.mark.django_db
def test_a_func_entry_fires_a_job_that_calls_its_function(settings):
    settings.QUEUE_SCHEDULES = [{"name": "marks", "func": "tests.support.schedules.mark_periodic"}]
    job = periodic.fire("marks")
    assert job.job_type == "call_function" and job.data["func"].endswith("mark_periodic")
    run_job(job.pk)
    assert has_run("periodic") and Job.objects.get(pk=job.pk).status == "succeeded"


def test_a_real_cluster_runs_the_declared_sweeper(cluster, user):
    """The sweeper's schedule, as synced, is fired by the cluster's scheduler pass (about 30 s
    after a cluster starts): its run is a job with its record, and the deletion it re-queues
    runs."""
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
    (run,) = jobs_of(SWEEPER)
    assert (run.status, run.result) == ("succeeded", {"requeued": 1})


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


@pytest.mark.django_db
def test_a_paused_queue_fires_nothing_and_its_resume_fires_the_latest_slot_once(settings):
    settings.QUEUE_SCHEDULES = [PERIODIC]
    migrate()
    Schedule.objects.exclude(name=NAME).update(next_run=timezone.now() + timedelta(days=1))
    Schedule.objects.filter(name=NAME).update(next_run=timezone.now() - timedelta(minutes=30))
    pausing.pause("database")

    assert scheduler_pass() == 0 and scheduler_pass() == 0
    assert not jobs_of().exists()
    assert Schedule.objects.get(name=NAME).next_run < timezone.now()  # left due

    pausing.resume("database")
    assert scheduler_pass() == 1 and scheduler_pass() == 0
    assert jobs_of().count() == 1


@pytest.mark.django_db
def test_a_task_entry_fires_a_django_task_job_with_its_arguments(settings):
    settings.QUEUE_SCHEDULES = [{"task": "tests.support.tasks.add", "args": [2, 3], "minutes": 5}]
    migrate()
    assert schedules()["tests.support.tasks.add"] == (
        FIRE,
        "'tests.support.tasks.add'",
        "I",
        5,
        None,
    )
    job = periodic.fire("tests.support.tasks.add")
    assert job.job_type == "django_task.database" and job.data["args"] == [2, 3]
    run_job(job.pk)
    assert Job.objects.get(pk=job.pk).result == {"sum": 5}


@pytest.mark.parametrize(
    ("schema", "timing"),
    [
        (JobData, {"every": timedelta(hours=1)}),  # needs a user_id: cannot fire with no data
        (UserlessJobData, {"every": timedelta(seconds=20)}),
        (UserlessJobData, {"cron": "0 3 * *"}),
        (UserlessJobData, {"every": timedelta(hours=1), "cron": "0 3 * * *"}),
    ],
)
def test_a_periodic_type_that_could_not_fire_is_refused_when_declared(schema, timing):
    with pytest.raises(ValueError):
        job_type("test_never_declared", queue="database", schema=schema, **timing)(lambda data: 0)
    assert registry.find("test_never_declared") is None
    assert "test_never_declared" not in periodic.all_periodic()


@pytest.mark.django_db
def test_a_failing_maintenance_run_is_a_job_that_is_retried_and_counted():
    migrate()
    job = periodic.fire("prune_job_records")
    outage = OperationalError("the database went away")
    with mock.patch("queues.maintenance.periodic.prune", side_effect=outage):
        run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error_class) == ("retrying", 1, "OperationalError")
    assert counted("attempts_failed", "prune_job_records") == 1
    assert counted("retries_scheduled", "prune_job_records") == 1
