"""API clients signed in as a given user, for tests that act as several users at once."""

from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


def token_client(user):
    """An `APIClient` sending `user`'s API token, as a script or an app would."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def enqueue_via_api(client, job_type, data):
    """`POST /api/queues/jobs` of a `job_type` job on the database queue; the response."""
    return client.post(
        "/api/queues/jobs", {"queue": "database", "type": job_type, "data": data}, format="json"
    )
