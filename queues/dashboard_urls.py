from django.urls import path

from queues import dashboard

urlpatterns = [
    path("queues", dashboard.queue_dashboard, name="queue-dashboard"),
    path("queues/jobs/<uuid:job_id>/retry", dashboard.retry_job, name="queue-dashboard-retry"),
    path("queues/jobs/<uuid:job_id>/cancel", dashboard.cancel_job, name="queue-dashboard-cancel"),
    path("queues/<str:queue>/pause", dashboard.pause_queue, name="queue-dashboard-pause"),
]
