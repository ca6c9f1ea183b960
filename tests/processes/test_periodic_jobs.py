"""Periodic jobs on real clusters: two `qcluster`s against one database fire a periodic job once
per time slot, and a periodic job that fails is retried, recorded, counted and shown."""

from collections import Counter
from datetime import UTC, datetime, timedelta

from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from queues.core import periodic
from queues.models import Job
from tests.support.cluster import wait_for
from tests.support.jobs import counted
from tests.support.periodic_settings import PERIODIC

NAME = PERIODIC["name"]
SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.support.periodic_settings"}


def slot_of(job):
    """The start of the slot a periodic job was fired for (its request id says it)."""
    return datetime.strptime(job.request_id, "periodic:%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def fired():
    return Job.objects.filter(job_type="test_periodic").order_by("created_at")


def test_two_clusters_fire_one_job_per_slot_and_a_failing_one_is_retried_and_shown(
    cluster, settings, client, operator_user
):
    settings.QUEUE_SCHEDULES = [PERIODIC]
    call_command("migrate", verbosity=0)  # syncs the declaration's Schedule row
    # Missed for five minutes: the clusters' first scheduler pass fires the latest slot only.
    Schedule.objects.filter(name=NAME).update(next_run=timezone.now() - timedelta(minutes=5))

    # Each cluster passes about every 30 s, at its own phase, so the two pass about every 15 s:
    # start early in a minute, so that the first slot's job fails for good (within seconds of
    # the first pass) before the next slot starts and a pass fires it.
    wait_for(lambda: timezone.now().second < 5, 60, message="the start of a minute")
    started = timezone.now()
    cluster.start(workers=2, extra_env=SETTINGS)
    cluster.start(workers=2, extra_env=SETTINGS)
    first = wait_for(
        lambda: fired().filter(status="failed").first(),
        120,
        message="the first slot's job to fail for good (passes about every 30 s)",
    )
    assert fired().count() == 1  # the latest slot only, not one per missed minute
    assert slot_of(first) > started - timedelta(minutes=1)
    assert first.attempts == 3 and "simulated outage of a periodic job" in first.last_error
    assert counted("retries_scheduled", "test_periodic") == 2
    assert counted("failed", "test_periodic") == 1
    # Any cluster firing that slot again gets the same job.
    again = periodic.fire(NAME, first.created_at)
    assert again.pk == first.pk and again.deduplicated

    second = wait_for(
        lambda: fired().exclude(pk=first.pk).first(), 120, message="the next slot's job"
    )
    slots = Counter(fired().values_list("request_id", flat=True))
    assert second.request_id != first.request_id
    assert set(slots.values()) == {1}, slots  # one job per slot, whatever the clusters did

    metrics = client.get("/metrics").content.decode()
    assert 'slimy_jobs_failed_total{job_type="test_periodic",queue="database"}' in metrics
    client.force_login(operator_user)
    assert f'data-job="{first.pk}"' in client.get("/dashboard/queues").content.decode()
