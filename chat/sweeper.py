"""The safety net for deletions: nothing is left behind if a job record is lost or pruned."""

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from chat.models import Conversation
from chat.services import enqueue_deletion
from queues.api import subjects_with_failed_jobs, subjects_with_live_jobs
from slimy.request_id import new_request_id

logger = logging.getLogger("chat.sweeper")

BATCH = 500


def sweep_deletions():
    """Re-queue deletion of conversations requested long ago, still present, with no live job.

    A job that is waiting long past its time counts as not live (its delivery was lost). A
    conversation whose deletion job failed for good is marked `deletion_failed_at` instead, for
    operators to retry, rather than queued again every minute; once no failed job of it is left
    (an operator retried the job, or retention pruned it) it is watched again like any other.
    """
    now = timezone.now()
    unmark_retried_deletions()
    cutoff = now - timedelta(seconds=settings.DELETION_SWEEP_AFTER_SECONDS)
    stale = list(
        Conversation.objects.filter(deletion_requested_at__lt=cutoff, deletion_failed_at=None)
        .order_by("deletion_requested_at")
        .values_list("pk", "owner_id")[:BATCH]
    )
    subjects = [Conversation.subject_for(pk) for pk, _ in stale]
    live = subjects_with_live_jobs("delete_conversation", subjects)
    failed = subjects_with_failed_jobs("delete_conversation", subjects) - live
    requeued = 0
    for pk, owner_id in stale:
        subject = Conversation.subject_for(pk)
        if subject not in live and subject not in failed:
            enqueue_deletion(pk, owner_id=owner_id, request_id=f"sweeper-{new_request_id()}")
            requeued += 1
    failed_ids = [pk for pk, _ in stale if Conversation.subject_for(pk) in failed]
    Conversation.objects.filter(pk__in=failed_ids).update(deletion_failed_at=now)
    if requeued:
        logger.warning("re-queued deletion of %d conversation(s) with no live job", requeued)
    if failed_ids:
        logger.error(
            "deletion of %d conversation(s) failed for good; see the admin", len(failed_ids)
        )
    return requeued


def unmark_retried_deletions():
    """Clear `deletion_failed_at` of the conversations with no deletion job failed for good left:
    retried from the job (admin, dashboard, API), whatever became of the retry, or pruned. Returns
    how many. Few conversations are marked: they are read in batches, all of them."""
    marked = Conversation.objects.filter(
        deletion_requested_at__isnull=False, deletion_failed_at__isnull=False
    ).order_by("pk")
    unmarked, after = 0, 0
    while batch := list(marked.filter(pk__gt=after).values_list("pk", flat=True)[:BATCH]):
        after = batch[-1]
        subjects = {Conversation.subject_for(pk): pk for pk in batch}
        failed = subjects_with_failed_jobs("delete_conversation", list(subjects))
        retried = [pk for subject, pk in subjects.items() if subject not in failed]
        unmarked += marked.filter(pk__in=retried).update(deletion_failed_at=None)
    return unmarked
