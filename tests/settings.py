"""The test suite's settings: the project's own, with a fast password hasher.

PBKDF2's deliberate slowness is the point in production and nothing but waiting in tests (each
`create_user` and password login paid it). Processes the tests start (gunicorn, qcluster,
manage.py) inherit `DJANGO_SETTINGS_MODULE`, so they verify the same hashes.
"""

from slimy.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
