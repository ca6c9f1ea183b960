"""Waiting for job records to reach a status while real clusters work them."""

from django.db import connection

from queues.core.selectors import counter_totals
from queues.models import Job
from tests.support.cluster import wait_for


def wait_for_jobs(job_ids=None, *, until=Job.FINISHED, timeout=60, interval=0.1):
    """Poll until every job of `job_ids` (every job there is, when None) has a status in `until`
    (one status or several); return them, in the order asked. A timeout fails the test naming
    the jobs that fell short, with their status and attempt."""
    statuses = {until} if isinstance(until, str) else set(until)
    wanted = None if job_ids is None else [str(pk) for pk in job_ids]

    def current():
        found = Job.objects.all() if wanted is None else Job.objects.filter(pk__in=wanted)
        return {str(job.pk): job for job in found}

    def short_of_it(jobs):
        behind = [
            f"{pk} {job.status} (attempt {job.attempts})"
            for pk, job in jobs.items()
            if job.status not in statuses
        ]
        return behind + [f"{pk} missing" for pk in wanted or () if pk not in jobs]

    def done():
        jobs = current()
        return not short_of_it(jobs) and [jobs]  # truthy even when there is no job at all

    def still_waiting():
        lines = short_of_it(current())
        goal = "finished" if statuses == set(Job.FINISHED) else " or ".join(sorted(statuses))
        return f"{len(lines)} job(s) to be {goal}: {', '.join(lines[:10])}"

    (jobs,) = wait_for(done, timeout, interval, message=still_waiting)
    return list(jobs.values()) if wanted is None else [jobs[pk] for pk in wanted]


def wait_for_job(job_id, *, until=Job.FINISHED, timeout=60, interval=0.05):
    """`wait_for_jobs` for one job: the job, once its status is in `until`."""
    return wait_for_jobs([job_id], until=until, timeout=timeout, interval=interval)[0]


def succeeded(job_ids):
    """How many of `job_ids` have succeeded so far."""
    return Job.objects.filter(pk__in=job_ids, status="succeeded").count()


def counted(name: str, job_type: str = "test_sleep", queue: str = "database") -> int:
    """The queue's counter `name` (enqueued, waiting, running, cancelled, ...) for `job_type`."""
    return counter_totals().get((queue, job_type, name), 0)


# A job's liveness lock as pg_locks shows it: its 64-bit key (the first 8 bytes of its id) split
# into classid (high half) and objid (low half), objsubid 1; a claims lock is (CLAIMS, token),
# objsubid 2 (queues/engine/liveness.py).
_JOB_KEY = "('x' || replace(left((%s::uuid)::text, 18), '-', ''))::bit(64)::bigint"
_HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = {sub}"
    " AND classid = {classid} AND objid = {objid}"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)


def job_lock_held(job_id) -> bool:
    """Whether any session holds the liveness lock of `job_id` (PostgreSQL)."""
    sql = _HELD.format(
        sub=1,
        classid=f"(({_JOB_KEY} >> 32) & 4294967295)::oid",
        objid=f"({_JOB_KEY} & 4294967295)::oid",
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [str(job_id)] * 2)
        return cursor.fetchone()[0]


def claims_lock_held(token: int) -> bool:
    """Whether any session holds the claims lock of a pusher's `token` (PostgreSQL)."""
    from queues.engine.liveness import CLAIMS

    with connection.cursor() as cursor:
        cursor.execute(_HELD.format(sub=2, classid=CLAIMS, objid="(%s)::oid"), [token])
        return cursor.fetchone()[0]
