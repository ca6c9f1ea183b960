"""The dashboard's Jobs page: find job records, act on many at once (`queues.web.bulk_actions`)."""

import json
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from queues.core import selectors
from queues.web.bulk_actions import BULK_ACTIONS, BULK_LIMIT, permitted_actions
from queues.web.forms import BulkActionForm, JobSearchForm, encode_cursor

PAGE_SIZE = 50
# "Apply to all matching" says how many that is, counted up to here (a bounded count).
COUNT_CAP = 10_000


def render_jobs_page(request, form, status=200):
    """The page for `form`: its results when valid, its errors (and no results) when not."""
    context = {"form": form, "actions": permitted_actions(request.user), "jobs": []}
    if form.is_valid():
        matching = selectors.search_jobs(request.user, **form.filters())
        jobs, newer, older = selectors.jobs_page(
            matching.select_related("user"),
            older_than=form.cleaned_data["older_than"],
            newer_than=form.cleaned_data["newer_than"],
            size=PAGE_SIZE,
        )
        for job in jobs:  # content redacted as everywhere: shown to the owner only
            job.redact_for(request.user)
            job.shown_data = json.dumps(job.data, ensure_ascii=False)
        query = form.query()
        context |= {
            "jobs": jobs,
            "matching": matching.order_by()[: COUNT_CAP + 1].count(),
            "count_cap": COUNT_CAP,
            "bulk_limit": BULK_LIMIT,
            "query": query,
            "newest_url": "?" + urlencode(query),
            # A page can be empty: its position's jobs may have gone since the link was made.
            "newer_url": newer and jobs and page_url(query, newer_than=jobs[0]),
            "older_url": older and jobs and page_url(query, older_than=jobs[-1]),
        }
    return render(request, "queues/jobs.html", context, status=status)


def page_url(query, **position):
    ((name, job),) = position.items()
    return "?" + urlencode({**query, name: encode_cursor(job.created_at, job.pk)})


# Anyone signed in to the admin; what they find is what they may see (`jobs_visible_to`).
@staff_member_required
@require_safe
def job_search(request):
    form = JobSearchForm(request.GET)
    return render_jobs_page(request, form, status=200 if form.is_valid() else 400)


@staff_member_required
@require_POST
def bulk_job_action(request):
    """Run one of `BULK_ACTIONS` on the ticked jobs or on all the search matches, then show
    the search again with what was done."""
    action = BULK_ACTIONS.get(request.POST.get("action"))
    permitted = permitted_actions(request.user)
    if not permitted or (action is not None and action not in permitted.values()):
        raise PermissionDenied
    form = BulkActionForm(request.POST)
    if not form.is_valid():
        return render_jobs_page(request, form, status=400)
    matching = selectors.search_jobs(request.user, **form.filters())
    if form.cleaned_data["scope"] == BulkActionForm.SELECTED:
        # Ticked jobs the viewer may not see are not found, like jobs that do not exist.
        chosen = matching.filter(pk__in=form.cleaned_data["job"])
    else:
        chosen = matching
    applicable = chosen.filter(status__in=action.applies_to)
    chosen_count, applicable_count = chosen.count(), applicable.count()
    batch = applicable.order_by("-created_at", "-id")[:BULK_LIMIT]
    messages.success(request, action.done.format(count=action.service(batch, by=request.user)))
    if chosen_count > applicable_count:
        left = chosen_count - applicable_count
        messages.info(request, f"{left} job(s) it does not apply to were left alone.")
    if applicable_count > BULK_LIMIT:
        more = applicable_count - BULK_LIMIT
        messages.warning(request, f"{more} more matching job(s): apply again for the next ones.")
    query = form.query()
    return redirect(reverse("queue-dashboard-jobs") + ("?" + urlencode(query) if query else ""))
