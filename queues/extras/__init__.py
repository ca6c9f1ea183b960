"""Optional integrations: the `django.tasks` backend and the demo job."""
