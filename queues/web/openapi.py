"""The API's error shape and status codes, declared once for the OpenAPI schema.

Views list which statuses each operation can answer with. The project's DRF exception handler
(here `slimy.errors`) produces these bodies; the queues app declares them, so its own views need
nothing from the project, and the project's views import them from here.
"""

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="A stable machine-readable code.")
    detail = serializers.CharField(help_text="A readable summary.")
    fields = serializers.DictField(
        required=False, help_text="Validation errors per field (400 on invalid input only)."
    )


_WHY = {
    400: "Malformed JSON or invalid input.",
    401: "No or bad credentials.",
    403: "Not allowed (or a session request without its CSRF token).",
    404: "Missing, or not yours: both answer alike.",
    406: "The Accept header asks for something other than JSON.",
    409: "Not possible in the resource's state (e.g. retrying a job that is not failed).",
    413: "The body is larger than the configured limit.",
    415: "The body is not JSON.",
    429: "Too many requests, or too many live jobs; retry after `Retry-After` seconds.",
}

# What any authenticated operation can answer besides its own statuses.
AUTHENTICATED = (401, 403, 406)
# What any operation that reads a JSON body can answer besides its own statuses.
WITH_BODY = (400, 413, 415)


def errors(*codes):
    """`extend_schema(responses=...)` entries for the given error statuses."""
    return {code: OpenApiResponse(ErrorSerializer, description=_WHY[code]) for code in codes}
