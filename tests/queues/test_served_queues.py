"""Which queues `manage.py qcluster` serves, with how many workers, and the options of django-q2
each queue's sentinel runs with (`queues.management.commands.qcluster`,
`queues.django_q2.cluster.queue_options`)."""

import pytest
from django.core.management import CommandError, call_command

from queues.django_q2.cluster import queue_options
from queues.management.commands.qcluster import served_queues


@pytest.fixture
def two_queues(settings):
    settings.QUEUE_DEFAULTS = {"workers": 4, "timeout": 120}
    settings.QUEUES = {"database": {}, "emails": {"workers": 2, "timeout": 30}}
    settings.QUEUE_REDELIVERY_GRACE = 30


def test_every_queue_of_the_setting_with_its_workers_by_default(two_queues, monkeypatch):
    monkeypatch.delenv("Q_CLUSTER_NAME", raising=False)
    assert served_queues(None) == {"database": 4, "emails": 2}


@pytest.mark.parametrize(
    ("spec", "served"),
    [
        ("database=4,emails=2", {"database": 4, "emails": 2}),
        ("emails", {"emails": 2}),
        (" emails=7 , database ", {"emails": 7, "database": 4}),
        ("database:1", {"database": 1}),
    ],
)
def test_the_queues_flag_names_queues_and_their_workers(two_queues, spec, served):
    assert served_queues(spec) == served


def test_name_or_q_cluster_name_serve_one_queue(two_queues, monkeypatch):
    assert served_queues(None, "emails") == {"emails": 2}
    monkeypatch.setenv("Q_CLUSTER_NAME", "emails")
    assert served_queues(None) == {"emails": 2}


@pytest.mark.parametrize(
    ("spec", "name", "message"),
    [
        ("nope", None, "Unknown queue 'nope'; the QUEUES setting has: database, emails."),
        ("database=0", None, "workers of queue 'database' must be a number above 0, not '0'"),
        ("database=-1", None, "must be a number above 0, not '-1'"),
        ("database=two", None, "must be a number above 0, not 'two'"),
        ("database=", None, "must be a number above 0, not ''"),
        ("database,,emails", None, "'' is not QUEUE or QUEUE=N"),
        ("emails,emails=3", None, "names queue 'emails' twice"),
        ("emails", "database", "Give --queues or --name, not both."),
        (None, "nope", "Unknown queue 'nope'"),
    ],
)
def test_a_bad_value_is_a_command_error(two_queues, spec, name, message):
    with pytest.raises(CommandError) as error:
        served_queues(spec, name)
    assert message in str(error.value)


def test_the_command_refuses_a_bad_flag_before_starting_anything(two_queues):
    with pytest.raises(CommandError, match="Unknown queue 'emali'"):
        call_command("qcluster", "--queues", "emali=2", skip_checks=True)


def test_a_queue_without_alt_clusters_gets_timeouts_from_its_queues_entry(two_queues, settings):
    settings.Q_CLUSTER = {"name": "database", "timeout": 135, "retry": 150, "bulk": 4}
    emails = queue_options("emails")
    assert emails["cluster_name"] == "emails"
    assert (emails["workers"], emails["timeout"], emails["retry"]) == (2, 45, 60)
    assert emails["bulk"] == 2  # one claimed row per worker at most
    database = queue_options("database", workers=8)
    assert (database["workers"], database["timeout"], database["retry"]) == (8, 135, 150)


def test_alt_clusters_options_win_and_prefetch_keeps_its_ratio_to_the_workers(settings):
    settings.QUEUES = {"database": {"workers": 4}, "emails": {"workers": 2}}
    settings.Q_CLUSTER = {
        "name": "database",
        "workers": 4,
        "queue_limit": 8,
        "ALT_CLUSTERS": {"emails": {"workers": 2, "retry": 99, "queue_limit": 6}},
    }
    assert queue_options("emails")["retry"] == 99
    assert queue_options("emails")["queue_limit"] == 6
    assert queue_options("emails", workers=4)["queue_limit"] == 12
    assert queue_options("database", workers=3)["queue_limit"] == 6
