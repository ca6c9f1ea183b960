"""The benchmark's peers: the same deletion on Celery (Redis broker) and on Procrastinate.

Both call `chat.services.delete_conversation`, the function our `delete_conversation` job runs,
with the Django ORM and the project's settings, at the same concurrency as our cluster:

    celery -A bench.peers worker --pool prefork --concurrency 10 -Q bench   # Celery 5, Redis
    python bench/peers.py procrastinate 10                                   # Procrastinate 3

Celery keeps its defaults (acknowledge on receipt, prefetch 4 per process, no result backend):
the cheapest Celery, not one with our guarantees. Procrastinate keeps its job rows (status
`succeeded`), like our job records, and runs a sync task in a thread per concurrent job.
Installed from bench/requirements.txt.
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "slimy.settings")

import django  # noqa: E402

django.setup()

import procrastinate  # noqa: E402
from celery import Celery  # noqa: E402

from chat import services  # noqa: E402

QUEUE = "bench"

app = Celery("bench", broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/15"))
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)

procrastinate_app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ["DATABASE_URL"])
)


@app.task(name="bench.delete_conversation")
def celery_delete(conversation_id, user_id):
    services.delete_conversation(conversation_id=conversation_id, user_id=user_id)


@procrastinate_app.task(name="bench.delete_conversation", queue=QUEUE)
def procrastinate_delete(conversation_id, user_id):
    services.delete_conversation(conversation_id=conversation_id, user_id=user_id)


def run_procrastinate(concurrency):
    import asyncio

    async def work():
        # One thread per concurrent sync job (the default executor has min(32, cpus + 4)).
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(concurrency))
        async with procrastinate_app.open_async():
            await procrastinate_app.run_worker_async(
                queues=[QUEUE], concurrency=concurrency, install_signal_handlers=True
            )

    asyncio.run(work())


if __name__ == "__main__":
    if sys.argv[1:2] == ["procrastinate"]:
        run_procrastinate(int(sys.argv[2]))
    else:
        sys.exit("usage: peers.py procrastinate CONCURRENCY")
