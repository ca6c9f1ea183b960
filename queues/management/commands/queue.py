import getpass

from django.core.management.base import BaseCommand, CommandError

from queues.conf import conf
from queues.core import pausing


class Command(BaseCommand):
    help = (
        "Pause or resume a queue on every cluster (within a second), or show which are paused. "
        "Running jobs finish; no job of a paused queue starts."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["pause", "resume", "status"])
        parser.add_argument("queue", nargs="?", help="a queue of the QUEUES setting")

    def handle(self, *args, action, queue=None, **options):
        if action == "status":
            paused = pausing.paused_queues()
            for name in conf.QUEUES:
                pause = paused.get(name)
                state = f"paused since {pause.paused_at:%Y-%m-%d %H:%M} UTC" if pause else "running"
                self.stdout.write(f"{name}: {state}")
            return
        if not queue:
            raise CommandError(f"which queue? one of: {', '.join(conf.QUEUES)}")
        # Recorded as done from the command line, by this OS account.
        detail = f"manage.py queue {action}, OS user {getpass.getuser()}"
        try:
            if action == "pause":
                changed = pausing.pause(queue, detail=detail)
            else:
                changed = pausing.resume(queue, detail=detail)
        except pausing.UnknownQueue as exc:
            raise CommandError(str(exc)) from None
        state = "paused" if action == "pause" else "resumed"
        self.stdout.write(f"{queue}: {state}" if changed else f"{queue}: already {state}")
