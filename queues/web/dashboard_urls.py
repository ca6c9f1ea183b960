from django.urls import path

from queues.web import dashboard, dashboard_jobs

urlpatterns = [
    path("queues", dashboard.queue_dashboard, name="queue-dashboard"),
    path("queues/jobs/<uuid:job_id>/retry", dashboard.retry_job, name="queue-dashboard-retry"),
    path("queues/jobs/<uuid:job_id>/cancel", dashboard.cancel_job, name="queue-dashboard-cancel"),
    path("queues/<str:queue>/pause", dashboard.pause_queue, name="queue-dashboard-pause"),
    path("queues/jobs", dashboard_jobs.job_search, name="queue-dashboard-jobs"),
    path("queues/jobs/bulk", dashboard_jobs.bulk_job_action, name="queue-dashboard-jobs-bulk"),
]
