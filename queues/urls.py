from django.urls import re_path

from queues.views import JobCreateView, JobDetailView

urlpatterns = [
    re_path(r"^jobs/?$", JobCreateView.as_view(), name="job-create"),
    re_path(r"^jobs/(?P<job_id>[^/]+)/?$", JobDetailView.as_view(), name="job-detail"),
]
