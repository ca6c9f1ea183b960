from django.apps import AppConfig
from django.conf import settings


class SlimyConfig(AppConfig):
    """The project itself, as an app only for its start-up hook."""

    name = "slimy"
    verbose_name = "Slimy"

    def ready(self):
        # Off, tracing costs nothing: not even the SDK's import.
        if settings.TRACES_EXPORTER is not None:
            from slimy import telemetry

            telemetry.configure()
