"""Settings of a project that adds `queues` to INSTALLED_APPS and sets none of queues' own
settings (queues.conf supplies them): what another Django project would start from."""

import os

SECRET_KEY = "bare-project-secret-key-for-tests-only-0123456789abcdefghijkl"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "queues",
    "django_q",
]
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BARE_PROJECT_DB"]}
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
# django-q2's own setting: one cluster, named after queues' default queue, on queues' broker;
# a row is delivered again after the queue's timeout (120) + QUEUE_REDELIVERY_GRACE (30).
Q_CLUSTER = {
    "name": "database",
    "orm": "default",
    "broker_class": "queues.django_q2.broker.JobBroker",
    "timeout": 135,
    "retry": 150,
}
