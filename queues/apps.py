from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate, pre_delete


class QueuesConfig(AppConfig):
    name = "queues"
    verbose_name = "Job queues"

    def ready(self):
        from queues import acknowledgement, checks, metrics, registry, schedules, task_backend

        acknowledgement.connect_signals()
        metrics.register()
        registry.autodiscover()
        task_backend.register_job_types()
        checks.register()
        # Periodic tasks follow the declared list (queues.schedules) after every `migrate`.
        post_migrate.connect(
            schedules.sync_after_migrate, sender=self, dispatch_uid="queues.sync_schedules"
        )
        # However a user is deleted (admin, shell, API), their job records lose their content in
        # the same transaction.
        pre_delete.connect(
            _user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="queues.forget_user"
        )


def _user_deleted(sender, instance, **kwargs):
    from queues.services import forget_user

    forget_user(instance.pk)
