#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "slimy.settings")
    try:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured
        from django.core.management import execute_from_command_line
        from django.core.management.base import CommandParser, handle_default_options
    except ImportError as error:
        sys.exit(
            f"Django is not installed for {sys.executable} ({error}). Run manage.py with the"
            " project's virtualenv: .venv/bin/python manage.py ... (scripts/run creates it)."
        )
    # `--settings` and `--pythonpath` first, as Django's command runner reads them, so that the
    # settings loaded below are the ones asked for.
    early = CommandParser(add_help=False, allow_abbrev=False)
    early.add_argument("--settings")
    early.add_argument("--pythonpath")
    handle_default_options(early.parse_known_args(sys.argv[2:])[0])
    # Settings errors first, alone: Django's command runner would otherwise carry on without
    # settings and fail later with a message that hides the cause.
    try:
        settings.INSTALLED_APPS  # noqa: B018 (loads the settings)
    except ImproperlyConfigured as error:
        sys.exit(f"manage.py: {error}")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
