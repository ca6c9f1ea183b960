"""LOG_FORMAT=json: one JSON object per line, with the job's ids on every job line."""

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from queues.api import enqueue
from queues.execution.log_context import ContextFilter, JsonFormatter
from queues.execution.runner import run_job
from queues.models import Job
from tests.support.cluster import ROOT


@pytest.mark.django_db(transaction=True)
def test_job_log_lines_are_json_with_the_job_context(user):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("queues.runner")
    logger.addHandler(handler)
    try:
        job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1}, request_id="req-9")
        run_job(job.pk)
    finally:
        logger.removeHandler(handler)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    # At INFO a job's one line is its outcome's (its start is a DEBUG line).
    assert [line["message"][:18] for line in lines] == ["job attempt failed"]
    for line in lines:
        assert line["job_id"] == str(job.pk)
        assert (line["queue"], line["job_type"], line["attempt"]) == ("database", "test_flaky", 1)
        assert (line["request_id"], line["user_id"]) == ("req-9", user.pk)
        assert "fail_times" not in line  # the data's ids only, never its other fields
    # A retry is expected: a warning without a traceback, which the job record keeps.
    assert lines[0]["level"] == "WARNING" and "traceback" not in lines[0]
    assert "OperationalError" in Job.objects.get(pk=job.pk).traceback


@pytest.mark.django_db
def test_a_job_failed_for_good_logs_an_error_with_its_traceback(user, caplog):
    job = enqueue("test_flaky", {"user_id": user.pk, "fail_times": 1})
    Job.objects.filter(pk=job.pk).update(max_attempts=1)
    with caplog.at_level(logging.INFO, logger="queues.runner"):
        run_job(job.pk)
    (record,) = [r for r in caplog.records if r.name == "queues.runner"]
    assert (record.levelname, record.getMessage()[:20]) == ("ERROR", "job failed for good:")
    assert record.exc_info is not None


LOG_ONE_LINE = """
import logging, django
django.setup()
from queues.execution import log_context
with log_context.bind(request_id="r-1", job_id="j-1"):
    logging.getLogger("queues.runner").warning("hello")
"""


def log_one_line(**env):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "slimy.settings", **env}
    run = subprocess.run(
        [sys.executable, "-c", LOG_ONE_LINE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    return run.stderr.strip()


def test_log_format_json_switches_the_console_to_json_and_text_stays_the_default():
    line = json.loads(log_one_line(LOG_FORMAT="json"))
    assert (line["message"], line["request_id"], line["job_id"]) == ("hello", "r-1", "j-1")
    assert log_one_line().endswith("WARNING queues.runner [r-1] hello job_id=j-1")
