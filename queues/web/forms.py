"""Forms of the staff dashboard's Jobs page: the search, and a bulk action on its results."""

import uuid
from datetime import UTC, datetime

from django import forms
from django.utils import timezone

from queues.core import registry
from queues.core.filters import UtcDateTimeField
from queues.models import Job
from queues.web.bulk_actions import BULK_ACTIONS, BULK_LIMIT

TIME_WIDGET = forms.DateTimeInput(format="%Y-%m-%dT%H:%M", attrs={"type": "datetime-local"})
TIME_RANGES = (("created_after", "created_before"), ("finished_after", "finished_before"))


class PageCursorField(forms.CharField):
    """A position in the list, "<created_at ISO>_<job id>": the row a page starts after."""

    widget = forms.HiddenInput

    def to_python(self, value):
        value = super().to_python(value)
        if not value:
            return None
        created_at, _, job_id = value.rpartition("_")
        try:
            created_at = datetime.fromisoformat(created_at)
            if timezone.is_naive(created_at):
                created_at = timezone.make_aware(created_at, UTC)
            return created_at.astimezone(UTC), uuid.UUID(job_id)
        except (ValueError, OverflowError) as error:
            message = "Not a page of this list: start again from the newest."
            raise forms.ValidationError(message) from error

    def prepare_value(self, value):
        return encode_cursor(*value) if isinstance(value, tuple) else value


def encode_cursor(created_at, job_id):
    return f"{created_at.isoformat()}_{job_id}"


class JobSearchForm(forms.Form):
    """What operators find jobs by; every field is optional and the given ones all apply."""

    job_id = forms.UUIDField(required=False, label="Job id")
    job_type = forms.ChoiceField(required=False, label="Type")
    status = forms.ChoiceField(required=False, choices=[("", "any"), *Job.Status.choices])
    user = forms.CharField(required=False, max_length=150, help_text="A username or a user id.")
    subject = forms.CharField(
        required=False, max_length=128, label="Subject", help_text="e.g. conversation:42"
    )
    created_after = UtcDateTimeField(required=False, widget=TIME_WIDGET)
    created_before = UtcDateTimeField(required=False, widget=TIME_WIDGET)
    finished_after = UtcDateTimeField(required=False, widget=TIME_WIDGET)
    finished_before = UtcDateTimeField(required=False, widget=TIME_WIDGET)
    older_than = PageCursorField(required=False)
    newer_than = PageCursorField(required=False)

    FILTERS = (
        "job_id",
        "job_type",
        "status",
        "user",
        "subject",
        "created_after",
        "created_before",
        "finished_after",
        "finished_before",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["job_type"].choices = [("", "any")] + [
            (name, name) for name in sorted(registry.all_types())
        ]

    def clean(self):
        cleaned = super().clean()
        for start, end in TIME_RANGES:
            if cleaned.get(start) and cleaned.get(end) and cleaned[start] > cleaned[end]:
                self.add_error(end, f"Must not be before “{self[start].label}”.")
        if cleaned.get("older_than") and cleaned.get("newer_than"):
            self.add_error(None, "A page is either older or newer than one position, not both.")
        return cleaned

    def filters(self):
        """The cleaned search, without the page position: what `selectors.search_jobs` takes."""
        return {name: self.cleaned_data[name] for name in self.FILTERS}

    def query(self):
        """The search as query parameters (for links that keep it), from what was submitted."""
        return {name: self.data[name] for name in self.FILTERS if self.data.get(name, "").strip()}


class SelectedJobsField(forms.Field):
    """The ids of the jobs ticked on the page."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value):
        if len(value or ()) > BULK_LIMIT:
            raise forms.ValidationError(f"Select at most {BULK_LIMIT} jobs at once.")
        ids = []
        for text in value or ():
            try:
                ids.append(uuid.UUID(text))
            except ValueError as error:
                raise forms.ValidationError(f"“{text[:40]}” is not a job id.") from error
        return ids


class BulkActionForm(JobSearchForm):
    """An action on the ticked jobs, or on every job the search matches."""

    SELECTED, MATCHING = "selected", "matching"

    action = forms.ChoiceField(choices=[(name, a.label) for name, a in BULK_ACTIONS.items()])
    scope = forms.ChoiceField(choices=[(SELECTED, "selected jobs"), (MATCHING, "all matching")])
    job = SelectedJobsField(required=False)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("scope") == self.SELECTED and not cleaned.get("job"):
            self.add_error("job", "Select at least one job, or apply to all matching jobs.")
        return cleaned
