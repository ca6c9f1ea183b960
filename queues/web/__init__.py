"""The queue's web face: the REST API, the admin, the dashboard and the metrics."""
