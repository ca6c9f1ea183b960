"""Throttles keyed on the client's real address, counted in the shared cache (settings.CACHES).

The address is REMOTE_ADDR, or, behind `TRUSTED_PROXIES` proxies, the one the outermost trusted
proxy saw (DRF's NUM_PROXIES): a client cannot pick its own key with X-Forwarded-For.
"""

import math

from django.contrib import admin
from django.http import JsonResponse
from rest_framework.throttling import SimpleRateThrottle


class LoginRateThrottle(SimpleRateThrottle):
    """Password attempts per client address, one budget for the API token and the admin login."""

    scope = "login"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


def throttled_admin_login(request, **kwargs):
    """The admin's login page, with each POST (a password attempt) counted by LoginRateThrottle."""
    throttle = LoginRateThrottle()
    if request.method == "POST" and not throttle.allow_request(request, None):
        wait = math.ceil(throttle.wait() or 1)
        response = JsonResponse(
            {
                "error": "throttled",
                "detail": f"Too many login attempts. Try again in {wait} seconds.",
            },
            status=429,
        )
        response["Retry-After"] = str(wait)
        return response
    return admin.site.login(request, **kwargs)
