"""A newcomer's first hour: scripts/run's flags, manage.py's settings errors, the landing page,
the admin's way to the dashboard, and workers that reload changed code in development."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from queues.api import enqueue
from queues.models import Job
from tests.support import cluster as cluster_support
from tests.support.cluster import ROOT, wait_for

RUN = [str(ROOT / "scripts" / "run")]


def run_script(*args, **env):
    return subprocess.run(
        [*RUN, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_scripts_run_help_describes_its_flags_and_sets_nothing_up():
    done = run_script("--help")
    assert done.returncode == 0
    assert done.stdout.startswith("Usage: scripts/run [--port N] [--host ADDRESS] [--help]")
    assert "==>" not in done.stdout


def test_scripts_run_refuses_an_unknown_argument_with_its_usage():
    done = run_script("--prot", "8001")
    assert done.returncode == 2
    assert "unknown argument '--prot'" in done.stderr and "Usage:" in done.stderr


def test_scripts_run_says_the_port_is_taken_before_anything_else_and_suggests_another():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_script("--port", str(port))
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "try scripts/run --port " in done.stderr
    assert done.stdout == ""  # no set-up step, no URL printed


def test_manage_py_names_a_missing_secret_key_at_once():
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY"}}
    env["DJANGO_SETTINGS_MODULE"] = "slimy.settings"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", "print('ran')"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "ran" not in done.stdout
    assert done.stderr.strip().startswith("manage.py: SECRET_KEY is not set: set DEBUG=1")


@pytest.mark.django_db
def test_the_landing_page_links_what_a_newcomer_needs(client):
    page = client.get("/")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    for link in ("/api/docs", "/api/chat/conversations", "/admin/", "/dashboard/queues"):
        assert f'href="{link}"' in html


@pytest.mark.django_db
def test_the_admin_links_to_the_site_and_operators_to_the_dashboard(client, operator_user):
    client.force_login(operator_user)
    html = client.get("/admin/").content.decode()
    assert 'href="/">View site</a>' in html
    assert 'href="/dashboard/queues">Queue dashboard</a>' in html


@pytest.mark.django_db
def test_the_admin_shows_no_dashboard_link_to_staff_who_may_not_see_it(client, staff_user):
    client.force_login(staff_user)
    assert "Queue dashboard" not in client.get("/admin/").content.decode()


@pytest.mark.django_db
def test_the_admin_keeps_a_tracebacks_indentation(client, operator_user, user):
    job = enqueue("test_sleep", {"user_id": user.pk})
    trace = "Traceback (most recent call last):\n  File x.py, line 1\n    boom()\nError: <b>"
    Job.objects.filter(pk=job.pk).update(status="failed", traceback=trace)
    client.force_login(operator_user)
    html = client.get(f"/admin/queues/job/{job.pk}/change/").content.decode()
    assert "  File x.py, line 1\n    boom()\nError: &lt;b&gt;</pre>" in html


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_qcluster_reload_restarts_the_workers_when_code_changes(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": cluster_support.test_database_url(),
        "QUEUE_WORKERS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "qcluster.log"
    with log.open("w") as output:  # the process keeps its own copy open
        process = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster", "--reload"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: log.read_text().count(" ready: ") == 1, 60, message=log.read_text)
        os.utime(ROOT / "tests" / "support" / "job_types.py")  # as an editor's save
        wait_for(lambda: log.read_text().count(" ready: ") == 2, 60, message=log.read_text)
        assert "job_types.py changed: restarting the worker cluster" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()
    # The reloader stopped its cluster before exiting: nothing of the group is left.
    with pytest.raises(ProcessLookupError):
        wait_for(lambda: os.killpg(process.pid, 0) and False, 15, message="the cluster's exit")
