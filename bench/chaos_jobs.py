"""The chaos harness's job type (bench/chaos.py), loaded by its clusters through JOB_TYPE_MODULES.

Its handler never fails by itself, so any failed job is a false failure, and it records each
completion in `chaos_ledger` inside the job's own transaction: a row exists exactly when a run of
the handler committed, so two rows for one job mean its handler ran twice to completion.
"""

import os
import time

from django.db import connection
from rest_framework import serializers

from queues.api import JobData, job_type

LEDGER = "chaos_ledger"
CREATE_LEDGER = f"""
CREATE TABLE IF NOT EXISTS {LEDGER} (
    job_id uuid NOT NULL,
    attempt integer NOT NULL,
    worker integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


class ChaosData(JobData):
    seconds = serializers.FloatField(min_value=0, default=0.1)


@job_type("chaos_work", queue="database", schema=ChaosData)
def chaos_work(data, job):
    time.sleep(data["seconds"])
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {LEDGER} (job_id, attempt, worker) VALUES (%s, %s, %s)",
            [str(job.id), job.attempt, os.getpid()],
        )
    return {"slept": data["seconds"]}
