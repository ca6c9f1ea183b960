"""Slimy settings.

Everything that differs between machines is read from the environment here, and only here.
"""

import os
import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name, default):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_list(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", default=False)

# A development key exists only so `DEBUG=1` works out of the box. Job payloads in the ORM broker
# are pickled and signed with this key, so production must bring its own long, secret one.
_DEV_SECRET_KEY = "django-insecure-slimy-development-key-do-not-use-in-production"
SECRET_KEY = os.environ.get("SECRET_KEY") or (_DEV_SECRET_KEY if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set: set DEBUG=1 for development (scripts/run does), or SECRET_KEY"
        " to a private value of at least 50 characters for production."
    )
if not DEBUG and (SECRET_KEY == _DEV_SECRET_KEY or len(SECRET_KEY) < 50):
    raise ImproperlyConfigured(
        "SECRET_KEY must be a private value of at least 50 characters when DEBUG is off"
        " (DEBUG=1 for development)."
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    # Before django_q: its `qcluster` command runs our cluster (queues/django_q2/cluster.py).
    "queues",
    "django_q",
    "django_tasks",
    "django_prometheus",
    "drf_spectacular",
    # Swagger UI's assets served from our own static files: the docs page needs no internet.
    "drf_spectacular_sidecar",
    # The project's own start-up: tracing (slimy.telemetry), in every process.
    "slimy.apps.SlimyConfig",
    "chat",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "slimy.request_id.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "slimy.urls"
WSGI_APPLICATION = "slimy.wsgi.application"
ASGI_APPLICATION = "slimy.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# DATABASE_URL selects PostgreSQL (postgres://...); without it an SQLite file in the project
# folder is used so the product starts anywhere with no server.
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
# Persistent connections: with Django's default of 0 every django-q2 task opens several new
# PostgreSQL connections, which caps the queue at about 30 jobs/s.
# A `qcluster` process (and the workers it forks) runs jobs, not requests. Nothing scrapes its
# in-process metrics (queue metrics come from the database: docs/metrics.md), so it skips
# django-prometheus' cursor wrapper, and it skips the health check (`SELECT 1`) that Django would
# run before every job: a connection that raised an error is checked and replaced before the next
# job anyway (Django's `close_old_connections`, which django-q2 calls per job), and one the server
# closed while idle is replaced where it is next used (`queues.engine.reconnect`).
QCLUSTER = sys.argv[1:2] == ["qcluster"]
_default_db = dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=not QCLUSTER)
DB_VENDOR = "sqlite" if _default_db["ENGINE"].endswith("sqlite3") else "postgresql"
if not QCLUSTER:
    # django-prometheus' wrappers of the same backends count queries, errors and connections.
    _default_db["ENGINE"] = {
        "sqlite": "django_prometheus.db.backends.sqlite3",
        "postgresql": "django_prometheus.db.backends.postgresql",
    }[DB_VENDOR]
if DB_VENDOR == "sqlite":
    # WAL lets readers and one writer share the file; IMMEDIATE takes the write lock when a
    # transaction starts (not on its first write), so concurrent writers queue on the busy
    # timeout instead of failing with "database is locked".
    _default_db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        # secure_delete overwrites deleted content in the file instead of leaving it in free pages.
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;"
        ),
    }
    # A file, not memory, so the qcluster processes that tests start can share it.
    _default_db["TEST"] = {"NAME": str(BASE_DIR / "test-db.sqlite3")}
# Behind PgBouncer in transaction mode (web processes only: docs/deployment.md), set
# QUEUE_PREPARED_STATEMENTS=0: nothing is prepared, and Django's server-side cursors (which
# `iterator()` opens) are off, since neither outlives the transaction on a pooled connection.
# Workers refuse to start with it off: they need a direct (or session-mode) DATABASE_URL.
QUEUE_PREPARED_STATEMENTS = env_bool("QUEUE_PREPARED_STATEMENTS", default=True)
# DATABASE_POOL=1: Django's psycopg pool in each web process (connections are then given back
# to the pool after each request instead of kept for CONN_MAX_AGE). Workers refuse it.
if DB_VENDOR == "postgresql":
    _default_db["DISABLE_SERVER_SIDE_CURSORS"] = not QUEUE_PREPARED_STATEMENTS
    if env_bool("DATABASE_POOL"):
        _default_db["OPTIONS"] = {**_default_db.get("OPTIONS", {}), "pool": True}
        _default_db["CONN_MAX_AGE"] = 0
DATABASES = {"default": _default_db}
# Throttle counts must be shared by every process and host: in Redis when CACHE_URL names it,
# else in a table of the database (`manage.py migrate` creates it), which works on SQLite too.
CACHE_URL = os.environ.get("CACHE_URL", "")
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
    }
elif CACHE_URL:
    raise ImproperlyConfigured("CACHE_URL must be a redis:// URL, or unset for the database.")
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "slimy_cache",
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Times to the second everywhere Django formats them (the admin's pages): slimy/formats/.
FORMAT_MODULE_PATH = ["slimy.formats"]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first, so an anonymous request gets 401 with WWW-Authenticate rather than 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "slimy.pagination.StrictPageNumberPagination",
    "PAGE_SIZE": env_int("API_PAGE_SIZE", 50),
    # With DEBUG on, browsers get DRF's browsable API (session login at /api/auth/login/);
    # production answers JSON only.
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        *(["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    ],
    "DEFAULT_PARSER_CLASSES": ["slimy.parsers.JSONParserWithDepthLimit"],
    "EXCEPTION_HANDLER": "slimy.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        # Password guesses per client address, shared by the token endpoint and the admin login.
        "login": os.environ.get("AUTH_TOKEN_RATE", "10/minute"),
        # Jobs a user may enqueue through `POST /api/queues/jobs`.
        "enqueue": os.environ.get("ENQUEUE_RATE", "120/minute"),
    },
    # Proxies in front of the app that append the client's address to X-Forwarded-For. With none
    # (the default) the header is ignored, since a client can send any value in it.
    "NUM_PROXIES": env_int("TRUSTED_PROXIES", 0),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Slimy API",
    "DESCRIPTION": "Conversations, their messages, and the jobs that act on them.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Separate request and response components, so read-only fields are not asked for as input.
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Job queues -----------------------------------------------------------------------------
# `manage.py qcluster` serves every queue, each with its own workers (`--queues` picks some), all
# on the ORM broker of the default database so a job is stored in the same transaction as the
# change that asks for it. SQLite allows one writer at a time, so it gets fewer workers.
QUEUE_DEFAULTS = {
    "workers": env_int("QUEUE_WORKERS", 2 if DB_VENDOR == "sqlite" else 10),
    # Seconds a job's handler may run before it is cut off and retried.
    "timeout": env_int("QUEUE_TIMEOUT", 120),
}
QUEUES = {
    "database": dict(QUEUE_DEFAULTS),
}
DEFAULT_QUEUE = "database"
# `django.tasks` (the django-tasks backport): `@task` functions run as jobs of our queues
# (queues.extras.task_backend, docs/tasks.md); task queue "default" is DEFAULT_QUEUE.
TASKS = {"default": {"BACKEND": "queues.extras.task_backend.QueueBackend"}}
# Per job type overrides of the registered retry policy, e.g.
# {"delete_conversation": {"attempts": 5, "backoff_seconds": 1.0, "jitter": 0.1}}.
JOB_RETRY_POLICIES = {}
# Extra modules that register job types (the apps' own `jobs` modules are always loaded).
JOB_TYPE_MODULES = env_list("JOB_TYPE_MODULES", [])
# Finished job records kept per queue and user; older ones are pruned by the maintenance
# schedule.
JOB_RETENTION = {
    "succeeded": env_int("JOB_KEEP_SUCCEEDED", 50),
    "failed": env_int("JOB_KEEP_FAILED", 100),
    "cancelled": env_int("JOB_KEEP_CANCELLED", 50),
}
# And none older than this many days, per status (unset: no age limit).
JOB_RETENTION_MAX_AGE = {
    status: timedelta(days=days)
    for status in JOB_RETENTION
    if (days := env_int(f"JOB_KEEP_{status.upper()}_DAYS", None)) is not None
}
# Queued, running or retrying jobs a user may have of the client-enqueueable types; one more
# gets a 429.
CLIENT_LIVE_JOBS_PER_USER = env_int("CLIENT_LIVE_JOBS_PER_USER", 100)
# A conversation whose deletion was requested this long ago, still present and with no live
# job, is queued for deletion again by the sweeper.
DELETION_SWEEP_AFTER_SECONDS = env_int("DELETION_SWEEP_AFTER_SECONDS", 300)
# Periodic jobs besides those declared beside their handlers (`every=`/`cron=` in `chat/jobs.py`,
# queues' own upkeep), synced into django-q2's schedules after `migrate` (docs/settings.md).
QUEUE_SCHEDULES = []
# /readyz fails when a due job has waited longer than this (seconds).
READY_MAX_BACKLOG_SECONDS = env_int("READY_MAX_BACKLOG_SECONDS", 300)


# How long after a job's timeout its broker row is handed out again when its worker died
# silently (SIGKILL, out of memory): django-q2's visibility timeout is `timeout + grace`.
QUEUE_REDELIVERY_GRACE = env_int("QUEUE_REDELIVERY_GRACE", 30)
# Every cluster looks this often (seconds) for work a dead cluster or worker left behind
# (queues.maintenance.rescuer). On PostgreSQL that bounds recovery from a crash to about this plus a
# second.
QUEUE_RESCUE_INTERVAL = env_int("QUEUE_RESCUE_INTERVAL", 5)
# A waiting job this many seconds past due whose broker row was claimed but never begun (any
# such job on Redis, which cannot be asked) is pushed again by the rescuer. A due job whose row is
# gone is pushed at the next rescue pass, on the database broker.
QUEUE_STRANDED_AFTER = env_int("QUEUE_STRANDED_AFTER", 45)
# Niceness of the qcluster's processes: raise it where workers share the web tier's cores.
QUEUE_WORKER_NICE = env_int("QUEUE_WORKER_NICE", 0)


def _cluster_options(queue):
    options = QUEUES[queue]
    return {
        "workers": options["workers"],
        # Our runner cuts a handler off at `timeout`; django-q2's guard, the backstop for a
        # worker stuck in C code, kills it a little later, and well before redelivery.
        "timeout": options["timeout"] + max(1, QUEUE_REDELIVERY_GRACE // 2),
        "retry": options["timeout"] + QUEUE_REDELIVERY_GRACE,
        # Prefetch little, so a crashed cluster strands few jobs and clusters share work.
        "queue_limit": options["workers"] * 2,
    }


Q_CLUSTER = {
    "name": DEFAULT_QUEUE,
    "orm": "default",
    # Only SQLite polls; on PostgreSQL an idle pusher waits on LISTEN/NOTIFY
    # (queues.django_q2.broker).
    "poll": 0.2,
    # Due broker rows claimed per round trip: one per worker keeps every worker busy.
    "bulk": QUEUE_DEFAULTS["workers"],
    # Our job records are the source of truth, so django-q2 stores no successes (its pruning
    # locks and scans every saved row per task). The runner records every job failure itself;
    # what escapes it (the database is down) stays unacknowledged and is delivered again.
    "save_limit": -1,
    "ack_failures": False,
    "max_attempts": 0,
    "broker_class": "queues.django_q2.broker.JobBroker",
    "catch_up": False,
    "label": "Django Q (broker)",
    **_cluster_options(DEFAULT_QUEUE),
    "ALT_CLUSTERS": {queue: _cluster_options(queue) for queue in QUEUES if queue != DEFAULT_QUEUE},
}
# Which broker carries the queues:
# - `orm` (default): our database broker (queues.django_q2.broker), jobs stored with the data
# change; - `redis`: django-q2's Redis broker (queues.django_q2.redis_broker): more throughput, but
# Redis cannot join the transaction and forgets a task whose worker died (see docs/deployment.md).
QUEUE_BROKER = os.environ.get("QUEUE_BROKER", "orm")
if QUEUE_BROKER == "redis":
    Q_CLUSTER["broker_class"] = "queues.django_q2.redis_broker.RedisJobBroker"
    Q_CLUSTER["redis"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
elif QUEUE_BROKER != "orm":
    raise ImproperlyConfigured("QUEUE_BROKER must be 'orm' or 'redis'.")

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
# "json": one JSON object per line (for log shippers); anything else: readable text.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "queues.execution.log_context.ContextFilter"}},
    "formatters": {
        "text": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s%(context)s",
        },
        "json": {"()": "queues.execution.log_context.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
            "filters": ["context"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Replaces Django's own console handler for "django", which would print lines twice.
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.db.backends": {"level": "INFO"},
        "django-q": {"level": os.environ.get("DJANGO_Q_LOG_LEVEL", "WARNING")},
    },
}


# --- Tracing --------------------------------------------------------------------------------
# OpenTelemetry, configured only by its standard variables. Its SDK reads the rest itself
# (endpoint, headers, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, batch
# delays); here we only decide whether tracing is on and where spans go. Off, with nothing set up
# and nothing exported, unless an OTLP endpoint or a traces exporter is named. See docs/tracing.md.
def _traces_exporter():
    if env_bool("OTEL_SDK_DISABLED"):
        return None
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or (
        "otlp" if endpoint else "none"
    )
    if exporter == "none":
        return None
    if exporter not in {"otlp", "console"}:
        raise ImproperlyConfigured("OTEL_TRACES_EXPORTER must be 'otlp', 'console' or 'none'.")
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if exporter == "otlp" and protocol != "http/protobuf":
        raise ImproperlyConfigured(
            "Only OTLP over HTTP is installed: OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf."
        )
    return exporter


TRACES_EXPORTER = _traces_exporter()
# Requests not worth a trace: Prometheus scrapes and health probes, every few seconds.
TRACES_EXCLUDED_URLS = os.environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", "metrics,healthz,readyz")

# --- Security -------------------------------------------------------------------------------
SESSION_COOKIE_SECURE = not DEBUG and env_bool("SECURE_COOKIES", default=True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Production is HTTPS only: plain HTTP is redirected and browsers are told to stay on HTTPS.
# Tests and local runs over plain HTTP turn the redirect off (scripts/test does).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 3600)
# The header allows preload-list submission; submitting stays a deliberate, manual step.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
# Behind a proxy that terminates TLS, its X-Forwarded-Proto header says whether the client used
# HTTPS. Only set this when the proxy always sets (or strips) that header.
if env_bool("TRUST_X_FORWARDED_PROTO"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BYTES", 1024 * 1024)
