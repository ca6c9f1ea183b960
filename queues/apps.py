from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import pre_delete


class QueuesConfig(AppConfig):
    name = "queues"
    verbose_name = "Job queues"

    def ready(self):
        from queues import broker, metrics, registry, task_backend

        broker.connect_signals()
        metrics.register()
        registry.autodiscover()
        task_backend.register_job_types()
        # However a user is deleted (admin, shell, API), their job records lose their content in
        # the same transaction.
        pre_delete.connect(
            _user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="queues.forget_user"
        )


def _user_deleted(sender, instance, **kwargs):
    from queues.services import forget_user

    forget_user(instance.pk)
