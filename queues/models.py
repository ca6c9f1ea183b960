import math
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from queues.core import registry
from queues.core.uniqueness import HOLDS_KEY


class Job(models.Model):
    """The record of one job: what was asked, by whom, and what became of it.

    This table, not django-q2's task tables, is the source of truth about jobs. django-q2's broker
    row only carries the job's id and when it may next run.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        RETRYING = "retrying"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        # Withdrawn before it ran, e.g. a message for a conversation that is being deleted.
        CANCELLED = "cancelled"

    WAITING = (Status.QUEUED, Status.RETRYING)
    # A waiting job this late has lost its delivery and was not rescued: it is not live.
    OVERDUE_AFTER = timedelta(minutes=2)
    LIVE = (Status.QUEUED, Status.RUNNING, Status.RETRYING)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    queue = models.CharField(max_length=64)
    job_type = models.CharField(max_length=64)
    data = models.JSONField()
    # What the job is about (e.g. "conversation:42"), so operators and services can find every
    # job of one object without knowing each type's data layout.
    subject = models.CharField(max_length=128, blank=True)
    # Indexed by `job_user_status_idx`, whose first column it is.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    request_id = models.CharField(max_length=128, blank=True)
    # W3C trace context of the enqueuer and of the last attempt (queues.execution.tracing); empty
    # when tracing is off.
    trace_context = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts started so far.")
    max_attempts = models.PositiveIntegerField()
    run_after = models.DateTimeField(default=timezone.now, help_text="Earliest next start.")
    last_error = models.TextField(blank=True)
    last_error_class = models.CharField(max_length=128, blank=True)
    traceback = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    # 0 is claimed first; the type's unless the enqueue chose another (docs/job-queue.md).
    priority = models.PositiveSmallIntegerField(default=0)
    # Options the enqueue chose for this job; null: its type's (docs/job-queue.md, "Job options").
    timeout = models.FloatField(
        null=True, blank=True, help_text="Seconds an attempt may run; empty: the type's."
    )
    backoff_seconds = models.FloatField(
        null=True, blank=True, help_text="Retry backoff base in seconds; empty: the type's."
    )
    # What the handler last reported (`RunningJob.report_progress`): a percentage and a short
    # message, which is output (shown like `result`).
    progress = models.FloatField(null=True, blank=True, help_text="Percent done, 0-100.")
    progress_message = models.CharField(max_length=200, blank=True, default="", db_default="")
    # A unique job type's key (`queues.core.uniqueness`): one job per key among those whose status
    # is in `unique_states` (a bit mask), enforced by the partial unique index of migration 0016.
    unique_key = models.CharField(max_length=64, blank=True, default="", editable=False)
    unique_states = models.PositiveSmallIntegerField(default=0, editable=False)
    # The database broker's row of the job's last push; the rescuer re-pushes a waiting job whose
    # row is gone. Null on Redis, where the broker is not in the database.
    broker_row = models.BigIntegerField(null=True, blank=True, editable=False)
    worker = models.CharField(max_length=128, blank=True, help_text="host:pid of the last attempt.")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    retried_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    retried_at = models.DateTimeField(null=True, blank=True)
    # A stop asked of the job while it ran (queues.execution.cancellation); a waiting job is
    # cancelled at once and keeps who asked here too. The handler sees it at its next check.
    cancel_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # Every write of a job adds an entry to each index whose predicate the new row meets
        # (`status` is indexed, so no update is HOT): three times per job. So an index holds only
        # the rows its queries look at (the same literals as theirs, or PostgreSQL cannot use
        # it), and nothing is indexed twice. docs/job-queue.md, "Indexes of queues_job".
        indexes = [
            # Retention keeps each user's newest N finished jobs (`FINISHED`) per queue and status.
            models.Index(
                fields=["queue", "status", "user", "-finished_at"],
                condition=models.Q(status__in=["succeeded", "failed", "cancelled"]),
                name="job_retention_finished_idx",
            ),
            # Live jobs (`LIVE`): the running ones (rescue of dead workers' attempts, the
            # dashboard) and the dashboard's status filter.
            models.Index(
                fields=["status", "run_after"],
                condition=models.Q(status__in=["queued", "running", "retrying"]),
                name="job_live_status_idx",
            ),
            # Waiting jobs only (written at enqueue and retry, not at begin or outcome): a queue's
            # longest-due (the rescue's bounded look for lost rows, the oldest due job of
            # /metrics and the dashboard) and the job of a broker row (the rescue's look at rows
            # claimed long ago), each an index range whatever the backlog.
            models.Index(
                fields=["queue", "run_after"],
                condition=models.Q(status__in=["queued", "retrying"]),
                name="job_waiting_due_idx",
            ),
            models.Index(
                fields=["broker_row"],
                condition=models.Q(status__in=["queued", "retrying"]),
                name="job_waiting_row_idx",
            ),
            # A user's jobs: the cap on live client jobs, what a user may see, the dashboard's
            # user filter, and the user's deletion (SET_NULL and erasure).
            models.Index(fields=["user", "status"], name="job_user_status_idx"),
            # How late the app's own job types are (/readyz), past any client backlog; also the
            # dashboard's filter on a rare type.
            models.Index(fields=["job_type", "status", "run_after"], name="job_type_due_idx"),
            # The dashboard's job search: pages newest first by keyset, any filter, one index
            # range each (docs/dashboard.md); failed jobs, what operators look for most, and
            # finished ones have their own, which live jobs' writes do not maintain.
            models.Index(fields=["created_at", "id"], name="job_created_idx"),
            models.Index(
                fields=["created_at", "id"],
                condition=models.Q(status="failed"),
                name="job_failed_created_idx",
            ),
            models.Index(
                fields=["finished_at"],
                condition=models.Q(finished_at__isnull=False),
                name="job_finished_idx",
            ),
            # Equality only (services, chat, the sweeper, the dashboard): no `_like` twin, since
            # no query matches a prefix (the admin's search is a substring match, no index's).
            models.Index(fields=["subject"], name="job_subject_idx"),
            models.Index(fields=["request_id"], name="job_request_id_idx"),
            # Only for a user's deletion (SET_NULL): the few jobs an operator retried or stopped.
            models.Index(
                fields=["retried_by"],
                condition=models.Q(retried_by__isnull=False),
                name="job_retried_by_idx",
            ),
            models.Index(
                fields=["cancel_requested_by"],
                condition=models.Q(cancel_requested_by__isnull=False),
                name="job_cancel_requested_by_idx",
            ),
        ]
        constraints = [
            # One live job per unique key (`queues.core.uniqueness`); a partial unique index.
            models.UniqueConstraint(
                fields=["unique_key"], condition=HOLDS_KEY, name="job_unique_key_idx"
            ),
        ]

    # Set on the job `enqueue` returns when it was already there (a unique type's duplicate).
    deduplicated = False

    def __str__(self):
        return f"{self.job_type} {self.id} ({self.status})"

    @property
    def is_finished(self):
        return self.status in self.FINISHED

    def data_for(self, viewer):
        """The job's data as `viewer` may see it: content fields to the job's owner only.

        Everyone else, superusers and operators included, sees their sizes instead.
        """
        if viewer is not None and viewer.pk is not None and viewer.pk == self.user_id:
            return self.data
        kind = registry.find(self.job_type)
        return kind.redacted(self.data) if kind else self.data

    def output_for(self, viewer):
        """(result, last_error, traceback) as `viewer` may see them: a type's content output
        (`output_is_content`) to the job's owner only, everyone else their sizes."""
        output = (self.result, self.last_error, self.traceback)
        if viewer is not None and viewer.pk is not None and viewer.pk == self.user_id:
            return output
        kind = registry.find(self.job_type)
        return tuple(kind.redacted_output(value) for value in output) if kind else output

    def progress_message_for(self, viewer):
        """The progress message as `viewer` may see it: redacted like the job's output."""
        if viewer is not None and viewer.pk is not None and viewer.pk == self.user_id:
            return self.progress_message
        kind = registry.find(self.job_type)
        return kind.redacted_output(self.progress_message) if kind else self.progress_message

    def redact_for(self, viewer):
        """This instance with everything `viewer` may not read redacted, for display only (it
        must never be saved). Returns it."""
        self.data = self.data_for(viewer)
        self.result, self.last_error, self.traceback = self.output_for(viewer)
        self.progress_message = self.progress_message_for(viewer)
        return self


# Histogram bucket bounds in seconds (Prometheus `le`), for run time and wait time.
HISTOGRAM_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, math.inf,
)  # fmt: skip
HISTOGRAMS = ("run_seconds", "wait_seconds")


def bucket_column(series, bound):
    """The `JobCounter` column counting observations of `series` at most `bound` seconds."""
    return f"{series}_le_{bound:g}".replace(".", "_")


class JobCounter(models.Model):
    """The running totals of one queue and job type, kept in the database: one row per shard.

    Updated in the same transaction as the job state change it counts, so every web and worker
    process, on any host, reads the same numbers, and they survive restarts and the pruning of job
    records. A change adds to several columns of one row (a job's start: `waiting` -1, `running`
    +1 and its wait observed), so it costs one row update, not one per number. `shard` spreads
    concurrent workers over several rows so they do not queue on one row lock; readers sum the
    shards. Histograms are kept as Prometheus exposes them: a `_sum` and cumulative bucket counts
    (`run_seconds_le_0_5`: observations of at most 0.5 s; `..._le_inf` is their count).
    """

    queue = models.CharField(max_length=64)
    job_type = models.CharField(max_length=64)
    shard = models.PositiveSmallIntegerField(default=0)
    enqueued = models.BigIntegerField(db_default=0)
    succeeded = models.BigIntegerField(db_default=0)
    failed = models.BigIntegerField(db_default=0, help_text="Jobs failed for good (once per job).")
    attempts_failed = models.BigIntegerField(db_default=0)
    retries_scheduled = models.BigIntegerField(db_default=0)
    cancelled = models.BigIntegerField(db_default=0)
    operator_retries = models.BigIntegerField(db_default=0)
    push_failures = models.BigIntegerField(
        db_default=0, help_text="Pushes to a broker outside the database that failed after commit."
    )
    # Gauges, as running deltas of the same changes.
    waiting = models.BigIntegerField(db_default=0)
    running = models.BigIntegerField(db_default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["queue", "job_type", "shard"], name="job_counter_unique"
            )
        ]

    def __str__(self):
        return f"{self.queue}/{self.job_type} [{self.shard}]"

    @classmethod
    def counted_fields(cls):
        """The names of the columns that count (all but the row's key)."""
        key = {"id", "queue", "job_type", "shard"}
        return [f.name for f in cls._meta.concrete_fields if f.name not in key]


for _series in HISTOGRAMS:
    JobCounter.add_to_class(f"{_series}_sum", models.FloatField(db_default=0))
    for _bound in HISTOGRAM_BUCKETS:
        JobCounter.add_to_class(
            bucket_column(_series, _bound), models.BigIntegerField(db_default=0)
        )
del _series, _bound


class JobMinute(models.Model):
    """Finished attempts per minute, for throughput and failure charts over the last hour."""

    queue = models.CharField(max_length=64)
    job_type = models.CharField(max_length=64)
    minute = models.DateTimeField()
    shard = models.PositiveSmallIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    run_seconds = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["queue", "job_type", "minute", "shard"], name="job_minute_unique"
            )
        ]
        indexes = [models.Index(fields=["minute"], name="job_minute_idx")]

    def __str__(self):
        return f"{self.queue}/{self.job_type} {self.minute:%H:%M}"


class ClusterHeartbeat(models.Model):
    """The last status a `qcluster` reported, written by the broker (`JobBroker.set_stat`).

    django-q2 keeps cluster status in the Django cache, which is per process unless configured
    otherwise; here every web process sees every cluster on any host.
    """

    key = models.CharField(max_length=200, primary_key=True)
    queue = models.CharField(max_length=64)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    status = models.CharField(max_length=32)
    payload = models.TextField(help_text="django-q2's signed Stat, for its own monitors.")
    seen_at = models.DateTimeField()

    def __str__(self):
        return f"{self.host}:{self.pid} [{self.queue}] {self.status}"


class DeclaredSchedule(models.Model):
    """A django-q2 Schedule row created by the schedule sync (queues.maintenance.schedules): the
    sync may delete it once it is no longer declared, and never touches schedules without one."""

    schedule = models.OneToOneField(
        "django_q.Schedule", primary_key=True, on_delete=models.CASCADE, related_name="+"
    )

    def __str__(self):
        return str(self.schedule_id)


class ScheduleFailureCounter(models.Model):
    """How often a schedule failed, by its name (django-q2's `group` of the tasks it creates):
    to fire its periodic job or create its task (a type no longer declared, a cron expression
    that does not parse) or in its function. Counted by `queues.django_q2.scheduler` for
    `/metrics` and the dashboard; a failing schedule never stops another one."""

    schedule = models.CharField(max_length=100, unique=True)
    failures = models.BigIntegerField(default=0)
    last_failed_at = models.DateTimeField()
    last_error = models.TextField(blank=True)

    def __str__(self):
        return f"{self.schedule}: {self.failures} failure(s)"


class JobEvent(models.Model):
    """One thing an operator or a user did to a job (cancel, stop request, retry), or its handler
    did (snooze): who and when.

    Written in the transaction of the action itself (`queues.core.history`). No database constraint
    on `job`: pruning deletes job records in one statement, and `prune` drops their events after.
    """

    class Action(models.TextChoices):
        CANCELLED = "cancelled"
        CANCEL_REQUESTED = "cancel_requested"
        STOPPED = "stopped"  # the handler honoured a stop request; the job is cancelled
        RETRIED = "retried"
        SNOOZED = "snoozed"  # its handler put it off (`Snooze`); no attempt spent

    job = models.ForeignKey(
        Job, on_delete=models.DO_NOTHING, db_constraint=False, related_name="events"
    )
    action = models.CharField(max_length=32, choices=Action.choices)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)
    detail = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self):
        return f"{self.action} by {self.by or 'the system'} at {self.at:%Y-%m-%d %H:%M:%S}"


class QueuePause(models.Model):
    """A paused queue: while its row exists no cluster starts a job of it (`core.pausing`)."""

    queue = models.CharField(max_length=64, primary_key=True)
    paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    paused_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "paused queue"
        permissions = [("pause_queue", "Can pause and resume queues")]

    def __str__(self):
        return f"{self.queue} (paused)"


class QueueEvent(models.Model):
    """A queue paused or resumed: by whom (none from `manage.py`, see `detail`), when."""

    class Action(models.TextChoices):
        PAUSED = "paused"
        RESUMED = "resumed"

    queue = models.CharField(max_length=64)
    action = models.CharField(max_length=16, choices=Action.choices)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)
    detail = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self):
        return f"{self.queue} {self.action} by {self.by or self.detail or '?'}"
