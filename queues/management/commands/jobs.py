"""`manage.py jobs list|show|cancel|retry|enqueue`: the job API's list and actions from a shell.

The filters are the API's (`queues.core.filters`), the actions the services the API, the admin
and the dashboard use, recorded in each job's history with the operator (`--by`) and the
command. Content fields are redacted as for an operator, unless `--by` names the job's owner.
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.utils import timezone

from queues.core import history, selectors, services
from queues.core.filters import JobFilterForm
from queues.errors import JobValidationError
from queues.execution.cancellation import cancel_jobs
from queues.models import Job

# (flag, filter): the API's query parameters as options.
FILTER_FLAGS = (
    ("--status", "status"),
    ("--type", "job_type"),
    ("--queue", "queue"),
    ("--user", "user"),
    ("--subject", "subject"),
    ("--request-id", "request_id"),
    ("--search", "q"),
    ("--created-after", "created_after"),
    ("--created-before", "created_before"),
    ("--finished-after", "finished_after"),
    ("--finished-before", "finished_before"),
)
FLAG_OF = {name: flag for flag, name in FILTER_FLAGS}
# (heading, width) of `list`'s table.
COLUMNS = (
    ("id", 36),
    ("queue", 12),
    ("type", 22),
    ("status", 9),
    ("tries", 5),
    ("created (UTC)", 19),
    ("finished (UTC)", 19),
    ("subject", 0),
)


class Command(BaseCommand):
    help = (
        "List, show, cancel, retry or enqueue jobs, with the filters of GET /api/queues/jobs. "
        "`manage.py jobs ACTION --help` for each."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        listing = actions.add_parser("list", help="jobs matching the filters, newest first")
        self.add_filters(listing)
        listing.add_argument("--limit", type=int, default=50, help="at most this many (50)")
        self.add_operator(listing, acts=False)
        self.add_output(listing)

        show = actions.add_parser("show", help="one job's record and history")
        show.add_argument("job_id")
        self.add_operator(show, acts=False)
        self.add_output(show)

        for name, what in (
            ("cancel", "cancel waiting jobs; ask running ones to stop"),
            ("retry", "send failed jobs back to their queue with a fresh attempt budget"),
        ):
            action = actions.add_parser(name, help=what)
            action.add_argument("job_ids", nargs="*", metavar="JOB_ID")
            self.add_filters(action)
            action.add_argument(
                "--all", action="store_true", help="every job (matching the filters), no ids"
            )
            self.add_operator(action)
            self.add_output(action)

        enqueue = actions.add_parser("enqueue", help="enqueue a job of any registered type")
        enqueue.add_argument("job_type", metavar="TYPE")
        enqueue.add_argument("--data", default="{}", help="the job's data, a JSON object")
        enqueue.add_argument("--priority", type=int, help="0 (first) to 9; the type's by default")
        enqueue.add_argument("--delay", type=float, default=0, help="seconds before it may run")
        self.add_output(enqueue)

    def add_filters(self, parser: CommandParser) -> None:
        group = parser.add_argument_group("filters (as GET /api/queues/jobs)")
        for flag, name in FILTER_FLAGS:
            several = name in ("status", "job_type", "queue")
            group.add_argument(
                flag,
                dest=name,
                action="append" if several else "store",
                help="repeat or separate with commas" if several else None,
            )

    def add_operator(self, parser: CommandParser, acts: bool = True) -> None:
        what = (
            "who acts, recorded in the jobs' history (needs queues.change_job); default: the"
            " command alone"
            if acts
            else "read as this user: the jobs they may see, content fields of their own only;"
            " default: every job, content fields of none"
        )
        parser.add_argument("--by", metavar="USERNAME", help=what)

    def add_output(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="JSON, as the API answers")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        self.by = self.user(options.get("by"))
        self.viewer = self.by or SYSTEM
        getattr(self, f"do_{action}")(**options)

    # --- actions -------------------------------------------------------------------------------

    def do_list(self, *, limit: int, **options: Any) -> None:
        if limit < 1:
            raise CommandError("--limit must be at least 1")
        jobs = list(self.matching(options).order_by("-created_at", "-id")[:limit])
        if options["json"]:
            self.write_json(jobs)
            return
        self.stdout.write("  ".join(f"{head:<{width}}" for head, width in COLUMNS).rstrip())
        for job in jobs:
            cells = (
                str(job.pk),
                job.queue,
                job.job_type,
                job.status,
                f"{job.attempts}/{job.max_attempts}",
                _time(job.created_at),
                _time(job.finished_at),
                job.subject,
            )
            line = "  ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True))
            self.stdout.write(line.rstrip())
        self.stderr.write(
            f"{len(jobs)} job(s)" + (" (--limit reached)" if len(jobs) == limit else "")
        )

    def do_show(self, *, job_id: str, **options: Any) -> None:
        job = self.visible().filter(pk=_uuid(job_id)).first()
        if job is None:
            raise CommandError(f"no job {job_id}")
        if options["json"]:
            self.write_json(job)
            return
        record = self.serialized(job)
        for name, value in record.items():
            if name == "history":
                continue
            shown = json.dumps(value, cls=DjangoJSONEncoder) if isinstance(value, dict) else value
            self.stdout.write(f"{name + ':':<20} {'' if value is None else shown}")
        traceback = job.output_for(self.viewer)[2]
        if traceback:
            self.stdout.write(f"traceback:\n{traceback}")
        for event in record["history"]:
            by = event["by"] or "-"
            self.stdout.write(f"history: {event['at']} {event['action']} by {by} {event['detail']}")

    def do_cancel(self, *, job_ids: list[str], **options: Any) -> None:
        jobs = self.acted_on(job_ids, options)
        cancelled, stopping = cancel_jobs(jobs, by=self.by, detail=self.detail("cancel"))
        self.report({"cancelled": cancelled, "asked_to_stop": stopping}, options)

    def do_retry(self, *, job_ids: list[str], **options: Any) -> None:
        jobs = self.acted_on(job_ids, options)
        retried = services.retry_jobs(jobs, by=self.by, detail=self.detail("retry"))
        self.report({"retried": retried}, options)

    def do_enqueue(
        self, *, job_type: str, data: str, priority: int | None, delay: float, **options
    ):
        try:
            values = json.loads(data)
        except ValueError as error:
            raise CommandError(f"--data is not JSON: {error}") from None
        if not isinstance(values, dict):
            raise CommandError("--data must be a JSON object")
        if delay < 0:
            raise CommandError("--delay must not be negative")
        run_after = timezone.now() + timedelta(seconds=delay) if delay else None
        try:
            job = services.enqueue(job_type, values, priority=priority, run_after=run_after)
        except JobValidationError as error:
            raise CommandError(str(error)) from None
        if options["json"]:
            self.write_json(job)
        else:
            state = "already there" if job.deduplicated else "enqueued"
            self.stdout.write(f"{job.pk} {job.job_type} on {job.queue}: {state}")

    # --- helpers ---------------------------------------------------------------------------------

    def user(self, username: str | None) -> Any:
        if not username:
            return None
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username})
        found = user.first()
        if found is None:
            raise CommandError(f"--by: no user {username!r}")
        return found

    def visible(self) -> QuerySet[Job]:
        return selectors.search_jobs(self.viewer)

    def matching(self, options: dict[str, Any]) -> QuerySet[Job]:
        given = {name: options[name] for _, name in FILTER_FLAGS if options.get(name) is not None}
        form = JobFilterForm(given)
        if not form.is_valid():
            raise CommandError(
                "; ".join(
                    f"{FLAG_OF[name]}: {' '.join(messages)}"
                    for name, messages in form.problems().items()
                )
            )
        self.filtered = bool(given)
        return selectors.search_jobs(self.viewer, **form.filters())

    def acted_on(self, job_ids: list[str], options: dict[str, Any]) -> QuerySet[Job]:
        if self.by is not None and not self.by.has_perm("queues.change_job"):
            raise CommandError(f"--by: {self.by.get_username()} lacks queues.change_job")
        jobs = self.matching(options)
        if job_ids:
            jobs = jobs.filter(pk__in=[_uuid(pk) for pk in job_ids])
        elif not (self.filtered or options["all"]):
            raise CommandError("which jobs? give job ids, filters, or --all")
        return jobs

    def detail(self, action: str) -> str:
        return f"manage.py jobs {action}, OS user {getpass.getuser()}"

    def serialized(self, jobs: Job | list[Job]) -> Any:
        from queues.web.serializers import JobSerializer

        many = isinstance(jobs, list)
        if many:
            from django.db.models import prefetch_related_objects

            prefetch_related_objects(jobs, history.EVENTS)
        context = {"request": SimpleNamespace(user=self.viewer)}
        return JobSerializer(jobs, many=many, context=context).data

    def write_json(self, jobs: Job | list[Job]) -> None:
        self.stdout.write(json.dumps(self.serialized(jobs), cls=DjangoJSONEncoder, indent=2))

    def report(self, counts: dict[str, int], options: dict[str, Any]) -> None:
        if options["json"]:
            self.stdout.write(json.dumps(counts))
        else:
            self.stdout.write(
                ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items())
            )


class _System:
    """Who runs `manage.py jobs` without `--by`: sees every job and who acted on it, and the
    content fields of none (as an operator)."""

    pk = None

    def has_perm(self, permission: str) -> bool:
        return True


SYSTEM = _System()


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise CommandError(f"{text!r} is not a job id") from None


def _time(moment: Any) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if moment else "-"
