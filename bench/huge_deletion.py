"""How long one attempt takes to delete one huge conversation, through the real runner.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/slimy_huge \\
        .venv/bin/python bench/huge_deletion.py --messages 3000000

Use a scratch database of its own: it is migrated, and the conversation and its messages are
written with one INSERT ... SELECT generate_series. The deletion runs as a worker runs it
(`queues.execution.runner.run_job`, in the main thread, so the queue's timeout and its cancel
apply), and the script prints the messages, the seconds the attempt took, and the job's final state.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import django

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "slimy.settings")
os.environ.setdefault("DEBUG", "1")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000_000)
    args = parser.parse_args()
    django.setup()

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from chat import services
    from chat.models import Conversation
    from queues.execution.runner import run_job
    from queues.models import Job

    call_command("migrate", verbosity=0)
    owner, _ = get_user_model().objects.get_or_create(username="huge-deletion-bench")
    conversation = Conversation.objects.create(owner=owner, title="Huge")
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO chat_message (conversation_id, role, content, created_at) "
            "SELECT %s, 'user', 'message number ' || n, now() FROM generate_series(1, %s) n",
            [conversation.pk, args.messages],
        )
        cursor.execute("ANALYZE chat_message")
    print(f"inserted {args.messages} messages in {time.monotonic() - started:.1f}s")

    job = services.request_conversation_deletion(conversation, request_id="huge-deletion-bench")
    started = time.monotonic()
    run_job(job.pk)
    seconds = time.monotonic() - started
    job = Job.objects.get(pk=job.pk)
    timeout = settings.QUEUES[job.queue]["timeout"]
    print(
        f"| {args.messages:,} messages | {seconds:.1f} s | timeout {timeout} s "
        f"| {job.status}, attempt {job.attempts} {job.last_error_class} |"
    )


if __name__ == "__main__":
    main()
