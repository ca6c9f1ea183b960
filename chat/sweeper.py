"""The safety net for deletions: nothing is left behind if a job record is lost or pruned."""

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from chat.models import Conversation
from queues.selectors import subjects_with_live_jobs
from queues.services import enqueue
from slimy.request_id import new_request_id

logger = logging.getLogger("chat.sweeper")

BATCH = 500


def sweep_deletions():
    """Re-queue deletion of conversations requested long ago, still present, with no live job."""
    cutoff = timezone.now() - timedelta(seconds=settings.DELETION_SWEEP_AFTER_SECONDS)
    stale = list(
        Conversation.objects.filter(deletion_requested_at__lt=cutoff)
        .order_by("deletion_requested_at")
        .values_list("pk", "owner_id")[:BATCH]
    )
    live = subjects_with_live_jobs(
        "delete_conversation", [Conversation.subject_for(pk) for pk, _ in stale]
    )
    requeued = 0
    for pk, owner_id in stale:
        if Conversation.subject_for(pk) not in live:
            enqueue(
                "database",
                "delete_conversation",
                {"conversation_id": pk, "user_id": owner_id},
                request_id=f"sweeper-{new_request_id()}",
            )
            requeued += 1
    if requeued:
        logger.warning("re-queued deletion of %d conversation(s) with no live job", requeued)
    return requeued
