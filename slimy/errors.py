"""One error shape for the whole API: `{"error": <code>, "detail": <text>}`, never HTML."""

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.views import exception_handler


def _first_message(detail):
    """A readable one-line summary of DRF's nested error detail."""
    if isinstance(detail, dict):
        for field, value in detail.items():
            message = _first_message(value)
            return message if field == "non_field_errors" else f"{field}: {message}"
        return "Invalid input."
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "Invalid input."
    return str(detail)


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body is too large."
    default_code = "request_too_large"


def api_exception_handler(exc, context):
    if isinstance(exc, RequestDataTooBig):  # the body is over DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = RequestTooLarge()
    response = exception_handler(exc, context)
    if response is None:
        return None  # not an API error: a real bug, let Django report it as a 500
    if isinstance(exc, exceptions.ValidationError):
        body = {
            "error": exc.default_code,
            "detail": _first_message(exc.detail),
            "fields": exc.detail
            if isinstance(exc.detail, dict)
            else {"non_field_errors": exc.detail},
        }
    elif isinstance(exc, exceptions.APIException):
        code = exc.get_codes()
        body = {
            "error": code if isinstance(code, str) else exc.default_code,
            "detail": _first_message(exc.detail),
        }
    elif isinstance(exc, Http404):
        body = {"error": "not_found", "detail": "Not found."}
    else:  # django.core.exceptions.PermissionDenied
        body = {
            "error": "permission_denied",
            "detail": "You do not have permission to perform this action.",
        }
    response.data = body
    return response


def json_404(request, exception=None):
    return JsonResponse(
        {"error": "not_found", "detail": "Not found."}, status=status.HTTP_404_NOT_FOUND
    )


def json_400(request, exception=None):
    return JsonResponse({"error": "bad_request", "detail": "Bad request."}, status=400)


def json_403(request, exception=None):
    return JsonResponse({"error": "permission_denied", "detail": "Forbidden."}, status=403)


def json_500(request):
    return JsonResponse({"error": "server_error", "detail": "Internal server error."}, status=500)
