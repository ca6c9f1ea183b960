"""Give every request an id: the client's `X-Request-ID` when it is sane, else a new one."""

import re
import uuid

from queues.execution import log_context

HEADER = "X-Request-ID"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id():
    return uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        supplied = request.headers.get(HEADER, "")
        request.request_id = supplied if _SANE.match(supplied) else new_request_id()
        with log_context.bind(request_id=request.request_id):
            response = self.get_response(request)
        response[HEADER] = request.request_id
        return response
