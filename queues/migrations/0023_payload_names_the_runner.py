"""Broker rows name the runner by its dotted path instead of pickling it by reference.

A row pushed before named it by reference, as `queues.runner.run_job` (the module before it moved
to `queues.execution.runner`) or `queues.execution.runner.run_job`; the first no longer imports.
Every row whose payload decodes is signed again with the runner's dotted path, which our worker
loop maps to the runner itself (`queues.django_q2.worker.announce`). A row that does not decode
(another secret key, a foreign payload) is left as it is.
"""

import io
import pickle

from django.db import migrations

# `queues.django_q2.payload.RUNNER`, frozen here as migrations are.
RUNNER = "queues.execution.runner.run_job"
# Where the runner was pickled from by reference: (module, name).
OLD_RUNNERS = {("queues.runner", "run_job"), ("queues.execution.runner", "run_job")}


class _Unpickler(pickle.Unpickler):
    """Reads a payload, with the runner by reference read as its dotted path."""

    renamed = False

    def find_class(self, module, name):
        if (module, name) in OLD_RUNNERS:
            self.renamed = True
            return RUNNER
        return super().find_class(module, name)


def _decode(payload):
    """(the task, whether it named the runner by reference) of a signed payload."""
    from django_q import core_signing
    from django_q.conf import Conf

    unpicklers = []

    class Serializer:
        @staticmethod
        def loads(data):
            unpicklers.append(_Unpickler(io.BytesIO(data)))
            return unpicklers[-1].load()

    task = core_signing.loads(payload, key=Conf.SECRET_KEY, salt=Conf.PREFIX, serializer=Serializer)
    return task, unpicklers[-1].renamed


def name_the_runner(apps, schema_editor):
    from django_q.signing import SignedPackage

    OrmQ = apps.get_model("django_q", "OrmQ")
    rows = OrmQ.objects.using(schema_editor.connection.alias)
    for row_id, payload in rows.values_list("id", "payload").iterator():
        try:
            task, renamed = _decode(payload)
        except Exception:  # not ours to read: left as it is
            continue
        if not renamed:
            continue
        rows.filter(id=row_id, payload=payload).update(payload=SignedPackage.dumps(task))


class Migration(migrations.Migration):
    dependencies = [
        ("queues", "0022_sqlite_broker_priority"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(name_the_runner, migrations.RunPython.noop)]
