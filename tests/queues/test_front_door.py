"""`queues` as a reusable app: it imports nothing from the project, and apps use one front door
(`queues.api`) to declare job types, enqueue them by name, and receive the job in handlers."""

import ast
from pathlib import Path

import pytest

from chat.models import Conversation
from queues.api import JobData, JobValidationError, enqueue, job_type
from queues.execution import handlers, log_context
from queues.models import Job

QUEUES_APP = Path(__file__).resolve().parents[2] / "queues"
PROJECT_PACKAGES = {"slimy", "chat", "bench", "tests"}


def imported_modules(path):
    """Every module a Python file imports, at the top or inside functions."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_the_queues_app_imports_nothing_from_the_project():
    sources = sorted(QUEUES_APP.rglob("*.py"))
    assert len(sources) > 30  # the scan sees the app, migrations and commands included
    offending = [
        f"{path.relative_to(QUEUES_APP.parent)}: {module}"
        for path in sources
        for module in imported_modules(path)
        if module.split(".")[0] in PROJECT_PACKAGES
    ]
    assert offending == []


def test_the_import_scan_catches_a_project_import(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("def f():\n    from slimy import request_id\nimport chat.models\n")
    assert sorted(imported_modules(source)) == ["chat.models", "slimy"]


@pytest.mark.django_db
def test_enqueue_by_type_name_puts_the_job_on_the_type_s_queue(user):
    job = enqueue("delete_conversation", {"conversation_id": 7, "user_id": user.pk})
    assert (job.queue, job.job_type, job.subject) == (
        "database",
        "delete_conversation",
        Conversation.subject_for(7),
    )


@pytest.mark.django_db
def test_enqueueing_an_unknown_type_stores_nothing(user):
    with pytest.raises(JobValidationError, match="unknown job type 'no_such_type'"):
        enqueue("no_such_type", {"user_id": user.pk})
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_enqueue_takes_the_request_id_from_its_caller_not_from_the_log_context(user):
    data = {"conversation_id": 7, "user_id": user.pk}
    with log_context.bind(request_id="bound-in-the-log-context"):
        given = enqueue("delete_conversation", data, request_id="req-given")
        none_given = enqueue("delete_conversation", data)
    assert given.request_id == "req-given"
    assert none_given.request_id not in ("", "bound-in-the-log-context")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "handler, expected",
    [
        (lambda data: ("data", data["n"]), ("data", 5)),
        (lambda payload, job: ("both", payload["n"], job.attempt), ("both", 5, 2)),
        (lambda job: ("job", job.data["n"], job.attempt, job.request_id), ("job", 5, 2, "r-1")),
    ],
    ids=["data", "data and job", "job"],
)
def test_a_handler_gets_what_its_parameters_ask_for(handler, expected):
    job = Job(queue="database", job_type="t", data={"n": 5}, attempts=2, request_id="r-1")
    assert handlers.call(handler, job) == expected


def test_the_running_job_is_read_only():
    running = handlers.RunningJob.of(Job(job_type="t", data={}, attempts=1, max_attempts=3))
    with pytest.raises(AttributeError):
        running.attempt = 9


@pytest.mark.parametrize(
    "handler",
    [lambda job, data: None, lambda data, extra: None, lambda: None],
    ids=["job first", "an unknown required parameter", "no parameter"],
)
def test_a_handler_that_fits_no_calling_convention_is_refused_when_declared(handler):
    with pytest.raises(TypeError, match=r"must take|takes neither"):
        job_type("never_registered", queue="database", schema=JobData)(handler)


@pytest.mark.django_db
def test_the_admin_finds_a_job_by_its_subject_s_id(client, superuser, user):
    client.force_login(superuser)
    about_42 = enqueue(
        "delete_conversation", {"conversation_id": 42, "user_id": user.pk}, request_id="r-a"
    )
    enqueue("delete_conversation", {"conversation_id": 7, "user_id": user.pk}, request_id="r-b")

    page = client.get("/admin/queues/job/", {"q": "42"})

    assert page.status_code == 200
    assert [str(job.pk) for job in page.context["cl"].result_list] == [str(about_42.pk)]
