"""Migration 0023 rewrites broker rows whose payload pickled the runner by reference from its
old module (`queues.runner`), so our worker loop runs them; rows it cannot read stay as they are."""

import sys
import types

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from queues.django_q2.payload import RUNNER
from queues.django_q2.worker import announce
from queues.execution.runner import run_job

BEFORE = ("queues", "0022_sqlite_broker_priority")
AFTER = ("queues", "0023_payload_names_the_runner")


def migrate(target=None):
    """To `target`, or to the latest migration of every app."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target] if target else executor.loader.graph.leaf_nodes())


def signed_the_old_way(job_id):
    """A payload as pushed before the runner moved: `queues.runner.run_job` by reference."""
    old = types.ModuleType("queues.runner")

    def old_run_job(job_id):
        raise AssertionError("never run")

    old_run_job.__module__, old_run_job.__qualname__ = "queues.runner", "run_job"
    old.run_job = old_run_job
    sys.modules["queues.runner"] = old
    try:
        return SignedPackage.dumps(
            {
                "id": "0" * 32,
                "name": f"test_sleep:{job_id}",
                "func": old_run_job,
                "args": (job_id,),
                "kwargs": {},
                "started": timezone.now(),
                "cluster": "database",
            }
        )
    finally:
        del sys.modules["queues.runner"]


@pytest.mark.django_db(transaction=True)
def test_a_row_pushed_with_the_runners_old_module_runs_after_the_migration():
    job_id = "00000000-0000-0000-0000-000000000001"
    migrate(BEFORE)
    try:
        old = OrmQ.objects.create(
            key="database", payload=signed_the_old_way(job_id), lock=timezone.now()
        )
        foreign = OrmQ.objects.create(
            key="database", payload="not a signed task", lock=timezone.now()
        )
        with pytest.raises(ModuleNotFoundError):
            SignedPackage.loads(old.payload)  # what a worker met before the migration

        migrate(AFTER)

        task = SignedPackage.loads(OrmQ.objects.get(pk=old.pk).payload)
        assert (task["func"], task["args"], task["name"]) == (
            RUNNER,
            (job_id,),
            f"test_sleep:{job_id}",
        )
        assert announce("Process-test", task) is run_job
        assert OrmQ.objects.get(pk=foreign.pk).payload == "not a signed task"
    finally:
        OrmQ.objects.all().delete()
        migrate()
