"""The job filters of the API's job list and of `manage.py jobs`: one parser for both.

Every value is checked; a bad one is reported against its parameter's name, never ignored. The
cleaned filters are `selectors.search_jobs`' keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.utils.datastructures import MultiValueDict

from queues.conf import conf
from queues.core import registry
from queues.models import Job

# Parameters that take several values: repeated (`?status=failed&status=cancelled`) or
# comma-separated (`?status=failed,cancelled`).
MULTIPLE = ("status", "job_type", "queue")
TIME_RANGES = (("created_after", "created_before"), ("finished_after", "finished_before"))


class UtcDateTimeField(forms.DateTimeField):
    """An ISO 8601 time, naive ones in the current time zone, given back in UTC: PostgreSQL
    refuses offsets beyond +-15:59, and the database compares in UTC anyway."""

    def to_python(self, value: Any) -> datetime | None:
        moment = super().to_python(value)
        if moment is None:
            return None
        try:
            return moment.astimezone(UTC)
        except (OverflowError, ValueError) as error:
            raise forms.ValidationError("Not a time the database can hold.") from error


class JobFilterForm(forms.Form):
    """What jobs are listed by; every filter is optional and the given ones all apply."""

    status = forms.MultipleChoiceField(required=False, choices=Job.Status.choices)
    job_type = forms.MultipleChoiceField(required=False)
    queue = forms.MultipleChoiceField(required=False)
    user = forms.CharField(required=False, max_length=150, help_text="A username or a user id.")
    subject = forms.CharField(required=False, max_length=128)
    request_id = forms.CharField(required=False, max_length=128)
    q = forms.CharField(
        required=False, max_length=128, help_text="A job id, subject or request id (exact)."
    )
    created_after = UtcDateTimeField(required=False)
    created_before = UtcDateTimeField(required=False)
    finished_after = UtcDateTimeField(required=False)
    finished_before = UtcDateTimeField(required=False)

    def __init__(self, data: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        split = _split(data) if data is not None else MultiValueDict()
        super().__init__(split if data is not None else None, **kwargs)
        self.repeated = [
            name for name in split if name not in MULTIPLE and len(split.getlist(name)) > 1
        ]
        self.empty = [name for name in split if not any(split.getlist(name))]
        for name, choices in (("job_type", sorted(registry.all_types())), ("queue", conf.QUEUES)):
            field = self.fields[name]
            assert isinstance(field, forms.ChoiceField)
            field.choices = [(choice, choice) for choice in choices]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        for name in self.repeated:
            if name in self.fields:
                self.add_error(name, "Give one value, not several.")
        for name in self.empty:
            if name in self.fields and name not in self.errors:
                self.add_error(name, "Give a value, or leave the parameter out.")
        for start, end in TIME_RANGES:
            if cleaned.get(start) and cleaned.get(end) and cleaned[start] > cleaned[end]:
                self.add_error(end, f"Must not be before {start}.")
        return cleaned

    def filters(self) -> dict[str, Any]:
        """The given filters, as `selectors.search_jobs` takes them."""
        return {name: value for name, value in self.cleaned_data.items() if value}

    def problems(self) -> dict[str, list[str]]:
        """{parameter: [what is wrong]}, for a 400 or a command's error."""
        return {name: [str(m) for m in messages] for name, messages in self.errors.items()}


def _split(data: Mapping[str, Any]) -> MultiValueDict:
    """`data` (a QueryDict, or a dict of strings and lists) with the values of the parameters
    that take several split at commas."""
    split: MultiValueDict = MultiValueDict()
    for name in data:
        values = _values(data, name)
        if name in MULTIPLE:
            values = [part.strip() for value in values for part in str(value).split(",")]
        split.setlist(name, [v for v in values if v != ""] if name in MULTIPLE else values)
        if not split.getlist(name):
            split.setlist(name, [""])  # kept, so an empty parameter is an error, not left out
    return split


def _values(data: Mapping[str, Any], name: str) -> list[Any]:
    if hasattr(data, "getlist"):
        return list(data.getlist(name))
    value = data[name]
    if value is None:
        return []
    return list(value) if isinstance(value, Iterable) and not isinstance(value, str) else [value]
