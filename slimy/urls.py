from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from slimy import health
from slimy.auth import ObtainTokenView
from slimy.throttling import throttled_admin_login

urlpatterns = [
    # A newcomer's first page (and the admin's "View site"): links only, no data.
    path(
        "",
        TemplateView.as_view(
            template_name="home.html", extra_context={"debug_api": settings.DEBUG}
        ),
        name="home",
    ),
    re_path(r"^api/auth/token/?$", ObtainTokenView.as_view(), name="auth-token"),
    path("api/chat/", include("chat.urls")),
    path("api/queues/", include("queues.web.urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("dashboard/", include("queues.web.dashboard_urls")),
    # The schema and its docs page are public: they describe the API, they hold no data.
    re_path(
        r"^api/schema/?$",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="schema",
    ),
    re_path(
        r"^api/docs/?$",
        SpectacularSwaggerView.as_view(
            url_name="schema", authentication_classes=[], permission_classes=[]
        ),
        name="docs",
    ),
    path("admin/login/", throttled_admin_login, name="admin-login"),
    path("admin/", admin.site.urls),
    path("", include("django_prometheus.urls")),
]

if settings.DEBUG:
    # The browsable API's session login and logout (DEBUG only, like the browsable API itself).
    urlpatterns.insert(1, path("api/auth/", include("rest_framework.urls")))

handler400 = "slimy.errors.json_400"
handler403 = "slimy.errors.json_403"
handler404 = "slimy.errors.json_404"
handler500 = "slimy.errors.json_500"
