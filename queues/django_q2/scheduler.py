"""django-q2's scheduler, one schedule at a time, and the report of schedules that fail.

A schedule of a periodic declaration (`queues.core.periodic`: func `periodic.FIRE`) fires its job
type here, in the schedule's transaction: one job for its latest slot, keyed by the slot, and its
`next_run` moved to the next slot (`periodic.fire_schedule`). Any other schedule (made by hand in
the admin) has its function run by a worker, as django-q2 does.

django-q2 1.11.1 turns every due Schedule row into a task inside one transaction: one schedule
that raises (a cron expression croniter cannot read, croniter missing, a bad `args`) rolls back
all of them, at every pass, and the stranded-job rescue, the pruning and the deletion sweeper stop
with it. Here each due schedule gets a transaction of its own: one that fails is logged, counted
(`ScheduleFailureCounter`: `/metrics`, the dashboard) and left as it was, and the others run.
Our cluster's sentinel calls `run_due_schedules` where django-q2's calls its `scheduler`
(`queues.django_q2.cluster`), about every 30 s.

A scheduled function that fails in a worker is counted the same way (`function_finished`, from
`queues.django_q2.worker`), and its broker row is acknowledged: it runs at its next due time, not
again at every restart of the cluster.
"""

import ast
import logging

from django.db import IntegrityError, router, transaction
from django.db.models import F, Q
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.humanhash import humanize
from django_q.models import Schedule
from django_q.tasks import async_task
from django_q.utils import close_old_django_connections, localtime

from queues.core import periodic
from queues.models import ScheduleFailureCounter

logger = logging.getLogger("queues.scheduler")

# Characters of a failure's error kept for the dashboard (the log has all of it).
ERROR_CHARS = 2000


def run_due_schedules(broker=None):
    """Fire the job or create the task of every due schedule of this cluster, each in its own
    transaction. Returns how many fired."""
    broker = broker or get_broker()
    close_old_django_connections()
    try:
        due = list(due_schedules().values_list("pk", "name"))
    except Exception:
        logger.exception("Could not read the due schedules; trying again at the next pass")
        return 0
    created = 0
    for pk, name in due:
        try:
            with transaction.atomic(using=router.db_for_write(Schedule)):
                schedule = due_schedules().select_for_update().filter(pk=pk).first()
                if schedule is None:  # another cluster took it meanwhile
                    continue
                if schedule.func != periodic.FIRE:
                    create_task(schedule, broker)
                elif periodic.fire_schedule(schedule) is None:
                    continue  # its queue is paused
                created += 1
        except Exception as exc:
            logger.exception(
                "Schedule %s could not create its task; the other schedules go on", name or pk
            )
            record_failure(name or str(pk), f"{exc.__class__.__name__}: {exc}")
    return created


def due_schedules():
    """Due schedules this cluster runs: those naming it, and, on the default cluster, those
    naming none (as django-q2 does)."""
    mine = Q(cluster=Conf.CLUSTER_NAME)
    if Conf.CLUSTER_NAME == Conf.PREFIX:
        mine |= Q(cluster__isnull=True)
    return Schedule.objects.exclude(repeats=0).filter(mine, next_run__lt=timezone.now())


def create_task(schedule, broker):
    """django-q2's `scheduler` for one schedule: its next run first (what a bad cron expression
    fails), then its task, then the schedule saved."""
    s = schedule
    args, kwargs = arguments(s)
    q_options = kwargs.get("q_options", {})
    if s.intended_date_kwarg:
        kwargs[s.intended_date_kwarg] = s.next_run.isoformat()
    if s.hook:
        q_options["hook"] = s.hook
    if s.schedule_type != s.ONCE:
        next_run = s.next_run
        while True:
            next_run = s.calculate_next_run(next_run)
            if Conf.CATCH_UP or next_run > localtime():
                break
        s.next_run = next_run
        s.repeats = max(s.repeats, -1)
        if s.repeats > 0:
            s.repeats -= 1
    q_options["cluster"] = s.cluster or q_options.get("cluster", q_options.pop("broker_name", None))
    if q_options["cluster"] in (None, Conf.CLUSTER_NAME):
        q_options["broker"] = broker
    q_options["group"] = q_options.get("group", s.name or s.id)
    kwargs["q_options"] = q_options
    s.task = async_task(s.func, *args, **kwargs)
    if not s.task:
        raise RuntimeError(f"django-q2 created no task for {s.func}")
    logger.info("created task %s from schedule %s", humanize(s.task), s.name or s.id)
    if s.schedule_type == s.ONCE:
        if s.repeats < 0:
            s.delete()
            return
        s.repeats = 0
    s.save()


def arguments(schedule):
    """(args, kwargs) of a schedule, read as django-q2 reads them: `kwargs` as a dict literal or
    as keyword syntax (`a=1, b='x'`), `args` as a literal (one value becomes a 1-tuple)."""
    kwargs = {}
    if schedule.kwargs:
        try:
            kwargs = ast.literal_eval(schedule.kwargs)
        except (SyntaxError, ValueError):
            try:
                keywords = ast.parse(f"f({schedule.kwargs})").body[0].value.keywords
                kwargs = {k.arg: ast.literal_eval(k.value) for k in keywords}
            except (SyntaxError, ValueError):
                kwargs = {}
    args = ()
    if schedule.args:
        args = ast.literal_eval(schedule.args)
        if type(args) is not tuple:
            args = (args,)
    return args, kwargs


def function_finished(task, success, result):
    """A worker ran a plain function (a schedule's, not a job's): its delivery is acknowledged
    whatever the outcome (django-q2's `ack_failure`), and a failure is counted under the
    schedule's name (the task's `group`)."""
    task["ack_failure"] = True
    if not success:
        schedule = str(task.get("group") or task["name"])
        logger.error("Schedule %s failed in its function; it runs again when next due", schedule)
        record_failure(schedule, str(result))


def record_failure(schedule, error):
    """Count one failure of `schedule` (a name). Never raises: a report must not stop the
    scheduler or the worker that makes it."""
    fields = {"last_failed_at": timezone.now(), "last_error": error[:ERROR_CHARS]}
    counters = ScheduleFailureCounter.objects.filter(schedule=schedule[:100])
    try:
        if counters.update(failures=F("failures") + 1, **fields):
            return
        try:
            with transaction.atomic():
                ScheduleFailureCounter.objects.create(schedule=schedule[:100], failures=1, **fields)
        except IntegrityError:  # counted by another process meanwhile
            counters.update(failures=F("failures") + 1, **fields)
    except Exception:
        logger.exception("Could not count the failure of schedule %s", schedule)
