"""Queue metrics for Prometheus, read from the database at scrape time.

Why the database and not prometheus_client's in-process counters: web and `qcluster` processes
are different processes, on different hosts in production, restart at will, and job records are
pruned. Counters kept in `JobCounter`, updated in the same transaction as each job state change
(`queues.engine.counters`), give the same numbers from whichever process Prometheus scrapes, survive
restarts and pruning, and never double count: a job failing all its attempts is one
`jobs_failed` and three `job_attempts_failed`. A scrape costs a fixed handful of indexed queries
(counters, oldest due job per queue, live clusters, paused queues, failing schedules), however
many jobs exist.
"""

import math

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import REGISTRY

from queues.conf import conf
from queues.core import pausing, selectors
from queues.django_q2.heartbeats import clusters_serving

COUNTERS = {
    "enqueued": ("slimy_jobs_enqueued", "Jobs enqueued."),
    "succeeded": ("slimy_jobs_succeeded", "Jobs that succeeded."),
    "failed": ("slimy_jobs_failed", "Jobs that failed for good (once per job)."),
    "attempts_failed": ("slimy_job_attempts_failed", "Attempts that failed (each attempt)."),
    "retries_scheduled": ("slimy_job_retries_scheduled", "Retries scheduled after a failure."),
    "cancelled": ("slimy_jobs_cancelled", "Jobs withdrawn before they ran."),
    "operator_retries": ("slimy_job_operator_retries", "Failed jobs re-queued by an operator."),
    "push_failures": (
        "slimy_job_push_failures",
        "Pushes to Redis that failed after the job was stored (the rescuer pushes it again).",
    ),
}
HISTOGRAMS = {
    # Together they tell a backed-up queue (waits grow) from slow jobs (run times grow).
    "run_seconds": ("slimy_job_run_seconds", "Run time of job attempts (start to finish)."),
    "wait_seconds": ("slimy_job_wait_seconds", "Queue wait of job attempts (due to start)."),
}
GAUGES = {
    "waiting": ("slimy_jobs_waiting", "Jobs queued or waiting for a retry."),
    "running": ("slimy_jobs_running", "Jobs running now."),
}


class QueueCollector:
    def describe(self):
        """The metric names, without touching the database (registration calls this)."""
        labels = ["queue", "job_type"]
        for metric, help_text in COUNTERS.values():
            yield CounterMetricFamily(metric, help_text, labels=labels)
        for metric, help_text in GAUGES.values():
            yield GaugeMetricFamily(metric, help_text, labels=labels)
        for metric, help_text in HISTOGRAMS.values():
            yield HistogramMetricFamily(metric, help_text, labels=labels)
        yield GaugeMetricFamily("slimy_queue_oldest_waiting_seconds", "", labels=["queue"])
        yield GaugeMetricFamily("slimy_queue_live_clusters", "", labels=["queue"])
        yield GaugeMetricFamily("slimy_queue_paused", "", labels=["queue"])
        yield GaugeMetricFamily("slimy_cluster_workers", "", labels=["host", "pid", "queue"])
        yield CounterMetricFamily("slimy_schedule_failures", "", labels=["schedule"])

    def collect(self):
        totals = selectors.counter_totals()
        types = sorted({(queue, job_type) for queue, job_type, _ in totals})
        labels = ["queue", "job_type"]
        for name, (metric, help_text) in COUNTERS.items():
            family = CounterMetricFamily(metric, help_text, labels=labels)
            for queue, job_type in types:
                family.add_metric([queue, job_type], totals.get((queue, job_type, name), 0))
            yield family
        for name, (metric, help_text) in GAUGES.items():
            family = GaugeMetricFamily(metric, help_text, labels=labels)
            for queue, job_type in types:
                family.add_metric([queue, job_type], totals.get((queue, job_type, name), 0))
            yield family
        for series, (metric, help_text) in HISTOGRAMS.items():
            family = HistogramMetricFamily(metric, help_text, labels=labels)
            for queue, job_type in types:
                buckets, total, _ = selectors.histogram(totals, queue, series, job_type)
                family.add_metric(
                    [queue, job_type],
                    [("+Inf" if math.isinf(b) else str(b), c) for b, c in buckets],
                    total,
                )
            yield family
        oldest = GaugeMetricFamily(
            "slimy_queue_oldest_waiting_seconds",
            "How long the longest-due waiting job has been due (0 while the queue is paused).",
            labels=["queue"],
        )
        clusters = GaugeMetricFamily(
            "slimy_queue_live_clusters",
            "qcluster processes seen in the last 30 s.",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "slimy_queue_paused",
            "1 while the queue is paused (no job of it starts).",
            labels=["queue"],
        )
        live = selectors.live_cluster_counts()
        paused_queues = pausing.paused_queues()
        for queue in conf.QUEUES:
            # A paused queue's jobs wait on purpose: not a backlog.
            job = None if queue in paused_queues else selectors.oldest_due_job(queue)
            age = (selectors.timezone.now() - job.run_after).total_seconds() if job else 0.0
            oldest.add_metric([queue], age)
            clusters.add_metric([queue], live.get(queue, 0))
            paused.add_metric([queue], 1 if queue in paused_queues else 0)
        yield oldest
        yield clusters
        yield paused
        workers = GaugeMetricFamily(
            "slimy_cluster_workers",
            "Worker processes of each live qcluster, per queue it serves.",
            labels=["host", "pid", "queue"],
        )
        for cluster in clusters_serving():
            for served in cluster["queues"]:
                if served["workers"] is not None:
                    labels = [cluster["host"], str(cluster["pid"]), served["queue"]]
                    workers.add_metric(labels, served["workers"])
        yield workers
        schedules = CounterMetricFamily(
            "slimy_schedule_failures",
            "Failures of a schedule: creating its task, or in its function.",
            labels=["schedule"],
        )
        for counter in selectors.failing_schedules():
            schedules.add_metric([counter.schedule], counter.failures)
        yield schedules


_collector = None


def register():
    """Register the collector once per process (web and workers import the app alike)."""
    global _collector
    if _collector is None:
        _collector = QueueCollector()
        REGISTRY.register(_collector)
