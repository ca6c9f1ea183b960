"""`queues` as a reusable app: it imports nothing from the project, its modules import each other
without a cycle, and apps use one front door (`queues.api`) to declare job types, enqueue them by
name, and receive the job in handlers."""

import ast
import itertools
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


def module_name(path, root):
    """`queues/core/registry.py` -> "queues.core.registry"; a package's `__init__.py`: its name."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(node):
    """The import statements under `node` that can run: at the top or inside functions, not
    under `if TYPE_CHECKING:` (read by type checkers only)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.orelse:
                yield from _runtime_imports(statement)
        else:
            yield from _runtime_imports(child)


def import_graph(root):
    """{module: {imported module of the same package: line of the first import}} for every module
    under the package directory `root`. `from a.b import c` imports `a.b.c` when that is a module,
    else `a.b`."""
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph[module] = {}
        for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` packages up
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base
                    for alias in node.names
                ]
            for target in targets:
                if target in paths and target != module:
                    edges.setdefault(target, node.lineno)
    return graph


def import_cycles(graph):
    """Cycles of imports, each a list of modules ending where it starts: at least one in each
    group of modules that import each other, [] when there is none."""
    cycles, done = [], set()
    for start in sorted(graph):
        if start in done:
            continue
        # Depth-first from `start`, following imports in order; a module met again while still
        # on the path closes a cycle.
        path, on_path, stack = [], {}, [(start, iter(sorted(graph[start])))]
        path.append(start)
        on_path[start] = 0
        while stack:
            module, targets = stack[-1]
            target = next(targets, None)
            if target is None:
                stack.pop()
                done.add(path.pop())
                del on_path[module]
            elif target in on_path:
                cycle = [*path[on_path[target] :], target]
                if not any(set(cycle) <= set(found) for found in cycles):
                    cycles.append(cycle)
            elif target not in done:
                on_path[target] = len(path)
                path.append(target)
                stack.append((target, iter(sorted(graph[target]))))
    return cycles


def describe(cycle, graph):
    """`a -> b (a:12) -> a (b:3)`: each import with the line of the module that makes it."""
    steps = [cycle[0]]
    for module, target in itertools.pairwise(cycle):
        steps.append(f"{target} ({module}:{graph[module][target]})")
    return " -> ".join(steps)


def test_the_queues_modules_import_each_other_without_a_cycle():
    graph = import_graph(QUEUES_APP)
    assert len(graph) > 30 and graph["queues.api"]  # the scan sees the app and its imports
    cycles = [describe(cycle, graph) for cycle in import_cycles(graph)]
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_scan_follows_function_level_and_module_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    import pkg.e\n")
    (package / "e.py").write_text("from pkg.d import typing\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub.b": 1} and graph["pkg.e"] == {"pkg.d": 1}
    assert import_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    assert describe(import_cycles(graph)[0], graph) == (
        "pkg.a -> pkg.sub.b (pkg.a:1) -> pkg.c (pkg.sub.b:2) -> pkg.a (pkg.c:1)"
    )


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
