"""The broker row's payload: django-q2's signed task, naming our runner and carrying a job's id.

The runner is named by its dotted path (`RUNNER`), not pickled by reference: pushing a job then
imports nothing of the runner (which pushes jobs itself), and our worker loop maps that exact
string to `run_job` without looking it up (`queues.django_q2.worker.announce`).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.utils import timezone
from django_q.signing import SignedPackage

from queues.core import registry

if TYPE_CHECKING:
    from queues.models import Job

# The task function of every broker row a job gets: `queues.execution.runner.run_job`.
RUNNER = "queues.execution.runner.run_job"


def payload(job: Job) -> str:
    """The signed task that makes a worker of `job.queue` run `job`: its id, nothing else."""
    package = {
        "id": uuid.uuid4().hex,
        "name": f"{job.job_type}:{job.id}",
        "func": RUNNER,
        "args": (str(job.id),),
        "kwargs": {},
        "started": timezone.now(),
        "cluster": job.queue,
    }
    return SignedPackage.dumps(package)


def priority(job: Job) -> int:
    """The broker row's claim rank (lower first): `JobType.broker_rank`."""
    kind = registry.find(job.job_type)
    return kind.broker_rank(job) if kind is not None else 2 * job.priority
