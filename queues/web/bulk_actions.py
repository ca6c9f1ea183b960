"""What the dashboard's Jobs page can do to many jobs at once: one row per action.

Each action names the permission it needs and the service that does it. A service takes a
queryset of jobs and `by` (who asked), acts only on those it applies to (checked again under its
own lock) and returns how many it changed. `applies_to` narrows "all matching" to the jobs the
action can change before `BULK_LIMIT` caps one request.
"""

from dataclasses import dataclass

from queues.core import services
from queues.execution.cancellation import cancel_jobs
from queues.models import Job

# Jobs one request changes at most: a retry pushes each job, so a page of thousands would run
# past the web server's timeout. More matching jobs: the operator applies the action again.
BULK_LIMIT = 500


@dataclass(frozen=True)
class BulkAction:
    label: str
    permission: str
    service: object  # callable(jobs, *, by) -> how many jobs it changed
    applies_to: tuple  # statuses of the jobs it can change
    done: str  # the message, formatted with `count`


def cancel_or_stop(jobs, *, by):
    """Cancel the waiting ones, ask the running ones to stop: how many of either."""
    cancelled, asked_to_stop = cancel_jobs(jobs, by=by)
    return cancelled + asked_to_stop


BULK_ACTIONS = {
    "retry": BulkAction(
        "Retry",
        "queues.change_job",
        services.retry_jobs,
        (Job.Status.FAILED,),
        "{count} failed job(s) sent back to their queue.",
    ),
    "cancel": BulkAction(
        "Cancel",
        "queues.change_job",
        cancel_or_stop,
        Job.LIVE,
        "{count} job(s) cancelled or asked to stop.",
    ),
    "delete": BulkAction(
        "Delete",
        "queues.delete_job",
        services.delete_finished_jobs,
        Job.FINISHED,
        "{count} finished job record(s) deleted.",
    ),
}


def permitted_actions(user):
    """{name: action} of the actions `user` may use."""
    return {name: a for name, a in BULK_ACTIONS.items() if user.has_perm(a.permission)}
