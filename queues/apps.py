from django.apps import AppConfig


class QueuesConfig(AppConfig):
    name = "queues"
    verbose_name = "Job queues"

    def ready(self):
        from queues import broker, metrics, registry

        broker.connect_signals()
        metrics.register()
        registry.autodiscover()
