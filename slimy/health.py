"""`/healthz` (the process answers) and `/readyz` (it can do useful work), for load balancers and
orchestrators. Both answer JSON; `/readyz` names each check and says which one failed: 503 when
this process cannot serve, 200 with status "degraded" when only a reported check failed.

Callers are anonymous, so the answer holds status and check names only. What went wrong (an
error's text, figures, queue names) goes to the log, and to a signed-in holder of
`queues.view_job` (an operator, e.g. from the dashboard's link), who sees each check's detail.
"""

import logging

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_q.brokers import get_broker

from queues.core import pausing, registry, selectors
from queues.engine import engine

logger = logging.getLogger("slimy.health")

_migrated = False  # once true, stays true for this process


@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


def _database():
    db = connections[DEFAULT_DB_ALIAS]
    db.ensure_connection()
    if not db.is_usable():  # a round trip: a connection kept from an earlier request may be dead
        db.close()
        db.ensure_connection()
    return True, "reachable"


def _broker():
    """Whether the queues' broker answers: the database itself (checked above) by default, or
    Redis, asked with a PING. The reason goes to the log, not to the unauthenticated caller."""
    if engine().broker_in_database():
        return True, "in the database"
    try:
        get_broker(next(iter(settings.QUEUES))).connection.ping()
    except Exception:
        logger.exception("readyz: the queues' broker did not answer")
        return False, "unreachable"
    return True, "reachable"


def _migrations():
    global _migrated
    if not _migrated:
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if pending:
            return False, f"{len(pending)} migration(s) not applied"
        _migrated = True
    return True, "applied"


def _clusters():
    live = sum(selectors.live_cluster_counts().values())
    return live > 0, f"{live} cluster(s) seen in the last 30 s"


def _backlog():
    """How late the app's own jobs (deletions) are. Client-enqueued jobs are left out: they wait
    behind the app's own, so one user's backlog of them says nothing about this web tier. So are
    paused queues, whose jobs wait on an operator's decision: shown as paused."""
    limit = settings.READY_MAX_BACKLOG_SECONDS
    worst = 0.0
    own_types = [name for name, kind in registry.all_types().items() if not kind.client_enqueueable]
    paused = pausing.paused_queues()
    for queue in settings.QUEUES:
        job = None if queue in paused else selectors.oldest_due_job(queue, own_types)
        if job is not None:
            worst = max(worst, (selectors.timezone.now() - job.run_after).total_seconds())
    detail = f"oldest due job waited {worst:.1f}s (limit {limit}s)"
    if paused:
        detail += f"; paused: {', '.join(sorted(paused))}"
    return worst <= limit, detail


CHECKS = {
    "database": _database,
    "broker": _broker,
    "migrations": _migrations,
    "clusters": _clusters,
    "backlog": _backlog,
}


# Reported, but not a reason to take this web process out of service: with the broker down,
# requests are still accepted (each job is stored and pushed once the broker answers), so a
# load balancer that pulled every web process would turn a broker outage into errors.
REPORTED_ONLY = {"broker"}


def run_checks():
    """{check name: {"ok": bool, "detail": text}}, every check of `CHECKS` in order."""
    results = {}
    for name, check in CHECKS.items():
        if name != "database" and not results["database"]["ok"]:
            results[name] = {"ok": False, "detail": "not checked: database unreachable"}
            continue
        try:
            passed, detail = check()
        except Exception as exc:  # a failing check is the answer, not a 500
            passed, detail = False, f"{exc.__class__.__name__}: {exc}".strip()
        results[name] = {"ok": passed, "detail": detail}
    return results


def _operator(request):
    """Whether the caller is signed in holding `queues.view_job`; never fails the answer."""
    try:
        return request.user.has_perm("queues.view_job")
    except Exception:  # the database that keeps sessions may be what is down
        return False


@never_cache
@require_GET
def readyz(request):
    results = run_checks()
    failed = [name for name, result in results.items() if not result["ok"]]
    for name in failed:
        logger.warning("readiness check %s failed: %s", name, results[name]["detail"])
    if not _operator(request):
        results = {name: {"ok": result["ok"]} for name, result in results.items()}
    unavailable = [name for name in failed if name not in REPORTED_ONLY]
    status = "unavailable" if unavailable else "degraded" if failed else "ok"
    body = {"status": status, "failed": failed, "checks": results}
    return JsonResponse(body, status=503 if unavailable else 200)
