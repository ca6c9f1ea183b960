"""The queues app's own settings: defaults that work in a project that sets none of them
(queues.conf), and system checks that name every bad value (queues.checks)."""

import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from queues.conf import DEFAULTS, conf
from tests.support.cluster import ROOT


def check(**overrides):
    """`manage.py check`'s report with `overrides` applied ("" when it finds nothing)."""
    with override_settings(**overrides):
        try:
            call_command("check", stdout=StringIO())
        except SystemCheckError as report:
            return str(report)
    return ""


def check_warnings(capsys, **overrides):
    with override_settings(**overrides):
        call_command("check")
    return capsys.readouterr().err


def test_the_project_settings_pass_the_checks():
    assert check() == ""
    assert check(QUEUE_REDELIVERY_GRACE=0) == ""  # redelivery right at the timeout


def test_a_project_that_sets_none_of_the_queue_settings_gets_the_defaults(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if k != "JOB_TYPE_MODULES"},
        "DJANGO_SETTINGS_MODULE": "tests.support.bare_project",
        "BARE_PROJECT_DB": str(tmp_path / "bare.sqlite3"),
    }
    manage = [sys.executable, "manage.py"]
    for command in (["check", "--fail-level", "WARNING"], ["migrate", "-v0"]):
        done = subprocess.run([*manage, *command], cwd=ROOT, env=env, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
    script = (
        "from django_q.models import Schedule; from queues.conf import conf;"
        "print(sorted(Schedule.objects.values_list('name', flat=True)));"
        "print(conf.QUEUES, conf.QUEUE_STRANDED_AFTER, conf.JOB_RETENTION)"
    )
    shown = subprocess.run(
        [*manage, "shell", "-v0", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert shown.stdout.splitlines() == [
        "['prune_job_records', 'redeliver_stranded_jobs']",
        "{'database': {'workers': 4, 'timeout': 120}} 45 "
        "{'succeeded': 50, 'failed': 100, 'cancelled': 50}",
    ], shown.stderr


def test_partial_settings_are_merged_over_the_defaults():
    with override_settings(
        QUEUE_DEFAULTS={"timeout": 30}, QUEUES={"database": {}, "slow": {"timeout": 600}}
    ):
        assert conf.QUEUES == {
            "database": {"workers": 4, "timeout": 30},
            "slow": {"workers": 4, "timeout": 600},
        }
    with override_settings(JOB_RETENTION={"failed": 7}):
        assert {**DEFAULTS["JOB_RETENTION"], "failed": 7} == conf.JOB_RETENTION


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("QUEUES", ["database"]),
        ("QUEUE_DEFAULTS", 120),
        ("QUEUE_RESCUE_INTERVAL", "5"),
        ("QUEUE_STRANDED_AFTER", 4.5),
        ("CLIENT_LIVE_JOBS_PER_USER", True),
        ("JOB_RETENTION", {"failed": "100"}),
        ("JOB_RETRY_POLICIES", {"delete_conversation": 5}),
        ("JOB_TYPE_MODULES", "tests.support.job_types"),
        ("QUEUE_SCHEDULES", {"name": "x"}),
        ("QUEUE_WORKER_NICE", 20),
        ("QUEUE_WORKER_NICE", "5"),
    ],
)
def test_a_setting_of_the_wrong_type_is_an_error(setting, value):
    report = check(**{setting: value})
    assert f"(queues.E001) {setting} must be" in report


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"QUEUE_RESCUE_INTERVAL": 0}, "QUEUE_RESCUE_INTERVAL"),
        ({"QUEUE_STRANDED_AFTER": -1}, "QUEUE_STRANDED_AFTER"),
        ({"QUEUE_REDELIVERY_GRACE": -1}, "QUEUE_REDELIVERY_GRACE"),
        ({"CLIENT_LIVE_JOBS_PER_USER": 0}, "CLIENT_LIVE_JOBS_PER_USER"),
        ({"QUEUES": {"database": {"timeout": 0}}}, 'QUEUES["database"]["timeout"]'),
        (
            {"QUEUES": {"database": {}}, "QUEUE_DEFAULTS": {"workers": -2}},
            'QUEUES["database"]["workers"]',
        ),
        ({"JOB_RETENTION": {"failed": -1}}, "JOB_RETENTION['failed']"),
    ],
)
def test_a_zero_or_negative_interval_or_count_is_an_error(overrides, named):
    report = check(**overrides)
    assert "(queues.E002)" in report and named in report


def test_a_cluster_named_after_no_queue_is_an_error(settings):
    report = check(Q_CLUSTER={**settings.Q_CLUSTER, "name": "databse"})
    assert "(queues.E003) Q_CLUSTER serves queue 'databse', which is not in QUEUES." in report


@pytest.mark.parametrize("setting", ["QUEUE_STRANDED_AFTER", "QUEUE_RESCUE_INTERVAL"])
def test_a_stranded_job_must_be_rescued_before_it_counts_as_overdue(setting):
    fine = {"QUEUE_STRANDED_AFTER": 100, "QUEUE_RESCUE_INTERVAL": 19}
    assert "queues.E004" not in check(**fine)
    assert "queues.E004" in check(**{**fine, setting: fine[setting] + 1})


def test_a_retry_policy_override_naming_an_unknown_field_is_an_error():
    report = check(JOB_RETRY_POLICIES={"delete_conversation": {"atempts": 5}})
    assert "(queues.E005) JOB_RETRY_POLICIES['delete_conversation'] names unknown field" in report
    assert "'attempts', 'autoretry_for', 'backoff_seconds', 'dont_autoretry_for'" in report


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ({"dont_autoretry_for": ["requests.NoSuchError"]}, "cannot be imported"),
        ({"autoretry_for": "queues.conf.conf"}, "is not an exception class"),
        ({"attempts": 0}, "attempts must be at least 1"),
    ],
)
def test_a_retry_policy_override_the_policy_refuses_is_an_error(override, said):
    report = check(JOB_RETRY_POLICIES={"delete_conversation": override})
    assert "(queues.E005) JOB_RETRY_POLICIES['delete_conversation'] is refused" in report
    assert said in report


def test_a_retry_policy_override_naming_error_classes_by_path_is_fine():
    report = check(
        JOB_RETRY_POLICIES={"delete_conversation": {"dont_autoretry_for": ["builtins.KeyError"]}}
    )
    assert "queues.E005" not in report


def test_retention_of_an_unknown_status_is_an_error():
    assert "(queues.E006) JOB_RETENTION names unknown status 'success'" in check(
        JOB_RETENTION={"success": 10}
    )


@pytest.mark.parametrize(
    ("overrides", "report"),
    [
        ({"JOB_RETENTION_MAX_AGE": {"done": 60}}, "(queues.E006) JOB_RETENTION_MAX_AGE names"),
        ({"JOB_RETENTION_MAX_AGE": {"failed": 0}}, "(queues.E002) JOB_RETENTION_MAX_AGE for"),
        ({"JOB_RETENTION_MAX_AGE": {"failed": "7d"}}, "(queues.E001) JOB_RETENTION_MAX_AGE must"),
        ({"JOB_RETENTION_BY_TYPE": {"test_sleep": 5}}, "(queues.E001) JOB_RETENTION_BY_TYPE must"),
        (
            {"JOB_RETENTION_BY_TYPE": {"test_sleep": {"count": {"failed": -1}}}},
            "(queues.E002) JOB_RETENTION_BY_TYPE['test_sleep']['failed'] must be zero or more",
        ),
        (
            {"JOB_RETENTION_BY_TYPE": {"test_sleep": {"max_age": {"failed": timedelta(0)}}}},
            "(queues.E002) JOB_RETENTION_BY_TYPE['test_sleep'] for 'failed' must be above zero",
        ),
        (
            {"JOB_RETENTION_BY_TYPE": {"test_sleep": {"count": {"sucess": 1}}}},
            "(queues.E006) JOB_RETENTION_BY_TYPE['test_sleep'] names unknown status 'sucess'",
        ),
        (
            {"JOB_RETENTION_BY_TYPE": {"test_sleep": {"age": {"failed": 1}}}},
            "(queues.E008) JOB_RETENTION_BY_TYPE['test_sleep'] names unknown key 'age'",
        ),
    ],
)
def test_bad_retention_by_age_or_type_is_an_error(overrides, report):
    assert report in check(**overrides)


def test_retention_for_an_unregistered_type_is_a_warning(capsys):
    report = check_warnings(capsys, JOB_RETENTION_BY_TYPE={"delete_conversaton": {}})
    assert "(queues.W004) JOB_RETENTION_BY_TYPE names 'delete_conversaton'" in report
    fine = {"count": {"failed": 500}, "max_age": {"succeeded": timedelta(hours=1)}}
    assert check(JOB_RETENTION_BY_TYPE={"delete_conversation": fine}) == ""


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "no func"},
        {"name": "typo", "func": "chat.sweeper.sweep_deletions", "minute": 5},
        {"name": "prune_job_records", "func": "queues.maintenance.periodic.prune"},
        {"job_type": "sweep_deletions"},  # declared beside its handler already
        {"name": "gone", "func": "chat.sweeper.no_such_function"},
        {"func": "queues.maintenance.periodic.prune"},  # no name
        {"name": "bad cron", "func": "queues.maintenance.periodic.prune", "cron": "61 * * * *"},
        {"name": "short cron", "func": "queues.maintenance.periodic.prune", "cron": "0 3 * *"},
        {
            "name": "both",
            "func": "queues.maintenance.periodic.prune",
            "cron": "0 3 * * *",
            "minutes": 5,
        },
        {"name": "zero", "func": "queues.maintenance.periodic.prune", "minutes": 0},
        {"job_type": "no_such_type"},
        {"job_type": "test_periodic", "func": "queues.maintenance.periodic.prune"},
        {"job_type": "test_periodic", "data": {"fail_times": -1}},
        {"job_type": "test_periodic", "data": []},
        {"job_type": "test_periodic", "every": timedelta(seconds=30)},
        {"job_type": "test_periodic", "every": 60},
        {"task": "tests.support.tasks.no_such_task"},
        {"task": "tests.support.tasks.add", "args": {"a": 1}},
        {"task": "tests.support.tasks.add", "data": {}},
        {"job_type": "test_periodic", "kwargs": {}},
    ],
)
def test_a_bad_schedule_declaration_is_an_error(entry):
    assert "(queues.E007) QUEUE_SCHEDULES entry" in check(QUEUE_SCHEDULES=[entry])


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "nightly", "func": "queues.maintenance.periodic.prune", "cron": "0 3 * * 1-5"},
        {"job_type": "test_periodic", "data": {"fail_times": 2}, "cron": "0 3 * * 1-5"},
        {"job_type": "test_periodic", "every": timedelta(hours=2)},
        {"name": "often", "job_type": "test_periodic", "minutes": 2},
        {"task": "tests.support.tasks.add", "args": [1, 2], "cron": "0 3 * * *"},
    ],
)
def test_a_good_schedule_declaration_passes_the_checks(entry):
    assert "E007" not in check(QUEUE_SCHEDULES=[entry])


def test_a_queue_needs_no_cluster_entry_of_its_own(capsys, settings):
    # qcluster serves it with options derived from QUEUES (tests/queues/test_served_queues.py).
    queues = {**settings.QUEUES, "reports": {}}
    assert "queues." not in check_warnings(capsys, QUEUES=queues)


def test_redelivery_before_a_job_may_end_is_a_warning(capsys, settings):
    report = check_warnings(capsys, Q_CLUSTER={**settings.Q_CLUSTER, "retry": 60})
    assert "(queues.W002) Q_CLUSTER retry for queue 'database' is 60 s" in report


def test_a_retry_policy_for_an_unregistered_job_type_is_a_warning(capsys):
    report = check_warnings(capsys, JOB_RETRY_POLICIES={"delete_conversations": {"attempts": 2}})
    assert "(queues.W003) JOB_RETRY_POLICIES names 'delete_conversations'" in report


def test_queues_reads_its_own_settings_only_through_conf():
    readers = [
        f"{path.relative_to(ROOT)}: settings.{name}"
        for path in (ROOT / "queues").rglob("*.py")
        if path.name not in {"conf.py", "checks.py"}
        for name in DEFAULTS
        if f"settings.{name}" in path.read_text().replace("`settings.", "`")
    ]
    assert readers == []
