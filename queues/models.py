import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


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
    LIVE = (Status.QUEUED, Status.RUNNING, Status.RETRYING)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    queue = models.CharField(max_length=64)
    job_type = models.CharField(max_length=64)
    data = models.JSONField()
    # What the job is about (e.g. "conversation:42"), so operators and services can find every
    # job of one object without knowing each type's data layout.
    subject = models.CharField(max_length=128, blank=True, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    request_id = models.CharField(max_length=128, blank=True, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts started so far.")
    max_attempts = models.PositiveIntegerField()
    run_after = models.DateTimeField(default=timezone.now, help_text="Earliest next start.")
    last_error = models.TextField(blank=True)
    last_error_class = models.CharField(max_length=128, blank=True)
    traceback = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    worker = models.CharField(max_length=128, blank=True, help_text="host:pid of the last attempt.")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    retried_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    retried_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Retention keeps the newest N finished jobs per queue and status.
            models.Index(fields=["queue", "status", "-finished_at"], name="job_retention_idx"),
            models.Index(fields=["status", "run_after"], name="job_status_run_after_idx"),
        ]

    def __str__(self):
        return f"{self.job_type} {self.id} ({self.status})"

    @property
    def is_finished(self):
        return self.status in self.FINISHED
