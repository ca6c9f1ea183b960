from django.core.management.base import BaseCommand

from queues.web.operators import OPERATOR_GROUP, OPERATOR_PERMISSIONS, ensure_operator


class Command(BaseCommand):
    help = (
        f"Create (or update) a staff account in the {OPERATOR_GROUP!r} group, which may watch "
        "and retry every user's jobs in the admin, the dashboard and the API. Not a superuser."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", nargs="?", default="operator")
        parser.add_argument(
            "--password",
            default="operator-password",
            help="set only when the account is created; an existing one keeps its password",
        )

    def handle(self, *args, username, password, **options):
        user, _ = ensure_operator(username, password)
        known = user.check_password(password)
        login = f"{username} / {password}" if known else f"{username} (its own password)"
        self.stdout.write(
            f"operator: {login}, staff, group {OPERATOR_GROUP!r} "
            f"({', '.join(OPERATOR_PERMISSIONS)}), not a superuser"
        )
