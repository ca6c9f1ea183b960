from django.apps import AppConfig


class QueuesConfig(AppConfig):
    name = "queues"
    verbose_name = "Job queues"

    def ready(self):
        from queues import registry

        registry.autodiscover()
