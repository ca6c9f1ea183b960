from django.apps import AppConfig, apps
from django.conf import settings
from django.db.models.signals import post_migrate, pre_delete


class QueuesConfig(AppConfig):
    name = "queues"
    verbose_name = "Job queues"

    def ready(self):
        from queues import checks
        from queues.core import registry
        from queues.django_q2 import acknowledgement
        from queues.extras import demo_job, task_backend  # noqa: F401 (demo_job declares its type)
        from queues.maintenance import periodic, schedules  # noqa: F401 (periodic: upkeep's types)
        from queues.web import metrics

        if apps.is_installed("django.contrib.admin"):
            # The admin pages live with the rest of the web face, not in `queues/admin.py`.
            from queues.web import admin  # noqa: F401

        acknowledgement.connect_signals()
        metrics.register()
        registry.autodiscover()
        task_backend.register_job_types()
        checks.register()
        # Periodic tasks follow the declared list (queues.maintenance.schedules) after every
        # `migrate`.
        post_migrate.connect(
            schedules.sync_after_migrate, sender=self, dispatch_uid="queues.sync_schedules"
        )
        # However a user is deleted (admin, shell, API), their job records lose their content in
        # the same transaction.
        pre_delete.connect(
            _user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="queues.forget_user"
        )


def _user_deleted(sender, instance, **kwargs):
    from queues.core.services import forget_user

    forget_user(instance.pk)
