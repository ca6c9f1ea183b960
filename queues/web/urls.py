from django.urls import re_path

from queues.web.views import (
    JobBulkCreateView,
    JobCancelView,
    JobDetailView,
    JobListCreateView,
    JobRetryView,
    QueueStatsView,
)

urlpatterns = [
    re_path(r"^stats/?$", QueueStatsView.as_view(), name="queue-stats"),
    re_path(r"^jobs/?$", JobListCreateView.as_view(), name="job-list"),
    re_path(r"^jobs/bulk/?$", JobBulkCreateView.as_view(), name="job-bulk-create"),
    re_path(r"^jobs/(?P<job_id>[^/]+)/?$", JobDetailView.as_view(), name="job-detail"),
    re_path(r"^jobs/(?P<job_id>[^/]+)/retry/?$", JobRetryView.as_view(), name="job-retry"),
    re_path(r"^jobs/(?P<job_id>[^/]+)/cancel/?$", JobCancelView.as_view(), name="job-cancel"),
]
