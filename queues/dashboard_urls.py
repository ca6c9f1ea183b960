from django.urls import path

from queues import dashboard

urlpatterns = [
    path("queues", dashboard.queue_dashboard, name="queue-dashboard"),
    path("queues/jobs/<uuid:job_id>/retry", dashboard.retry_job, name="queue-dashboard-retry"),
]
