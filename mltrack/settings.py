"""Settings for mltrack: one file, everything environment-specific from os.getenv.

Defaults suit local development (SQLite, Redis on 127.0.0.1). Production sets
DEBUG=0, SECRET_KEY, ALLOWED_HOSTS, DATABASE_URL and REDIS_URL (see README).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.getenv(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(
        f"{name} must be a boolean (1/0, true/false), not {value!r}"
    )


def env_int(name: str, default: int, minimum: int = 0) -> int:
    value = os.getenv(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be an integer, not {value!r}"
        ) from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def env_list(name: str, default: str) -> list[str]:
    return [
        item.strip() for item in os.getenv(name, default).split(",") if item.strip()
    ]


DEBUG = env_bool("DEBUG", True)

SECRET_KEY = os.getenv("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-dev-only-key-set-SECRET_KEY-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
PORT = env_int("PORT", 8000, minimum=1)
SITE_URL = os.getenv("SITE_URL", f"http://127.0.0.1:{PORT}").rstrip("/")

# No "daphne" app: it only swaps in its own runserver, and importing it loads Twisted
# (~40 MB) into every process, the worker's included. The web process is daphne
# itself (Procfile, scripts/run).
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "sessions.apps.TrainingSessionsConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mltrack.urls"
ASGI_APPLICATION = "mltrack.asgi.application"

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

# SQLite is the embedded default. WAL lets the web process read while the worker
# writes; IMMEDIATE transactions and a busy timeout make writers queue instead of
# failing with "database is locked".
DATABASES = {
    "default": dj_database_url.parse(
        os.getenv("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0),
        # A kept connection that died (a database restart) is replaced before a
        # request uses it.
        conn_health_checks=True,
    )
}
# Threads that run the web process's requests, each with its own database
# connection (mltrack/asgi.py): at most this many requests run at once.
WEB_THREADS = env_int("WEB_THREADS", 20, minimum=1)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": env_int("SQLITE_BUSY_TIMEOUT", 20, minimum=0),
    }
    # Tests run the worker and daphne as separate processes: they need a file.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / "test.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's PostgreSQL backend with a health check that costs no round trip
    # while the connection's socket is quiet (mltrack/postgresql/base.py).
    DATABASES["default"]["ENGINE"] = "mltrack.postgresql"
if DATABASES["default"]["ENGINE"] == "mltrack.postgresql" and env_bool(
    "DB_POOL", False
):
    # A pool of connections shared by the web process's threads. Off by default:
    # the web process keeps one connection per request thread (mltrack/asgi.py),
    # and after a database restart psycopg's pool checks its dead connections one
    # by one with growing pauses, so the first requests waited 10 s and failed.
    # Never for the worker: a pool must not be inherited across a fork.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    pool_size = env_int("DB_POOL_MAX_SIZE", 20, minimum=1)
    DATABASES["default"]["OPTIONS"] = {
        "pool": {"min_size": min(2, pool_size), "max_size": pool_size, "timeout": 10}
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "sessions:models"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Where collectstatic gathers the files whitenoise serves when DEBUG is off.
STATIC_ROOT = Path(os.getenv("STATIC_ROOT", BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Serve static files from the finders when DEBUG is on, so no collectstatic is needed
# in development or tests. With DEBUG off, whitenoise serves STATIC_ROOT's hashed,
# pre-compressed copies with far-future cache headers.
WHITENOISE_USE_FINDERS = DEBUG

# Redis carries the Celery queue, the cache and the live events (pub/sub, see
# sessions/events.py; no Channels layer is configured: sockets take no channel).
REDIS_URL = os.getenv("REDIS_URL", "redis://127.0.0.1:6379/0")

# Shared by every web process: the login rate limit counts across all of them.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "mltrack",
    }
}
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
LOGIN_FAILURE_WINDOW = env_int("LOGIN_FAILURE_WINDOW", 300, minimum=1)

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A worker takes one training at a time and acknowledges it only when done, so a
# busy worker never hoards queued sessions that another worker could start.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Training limits.
MLTRACK_MAX_EPOCHS = env_int("MLTRACK_MAX_EPOCHS", 100_000, minimum=1)
# The run-logging API's one-epoch call answered on the event loop, before Django's
# request handling (sessions/fastlog.py). 0 sends every call to the view.
MLTRACK_FAST_LOG = env_bool("MLTRACK_FAST_LOG", True)
# Uploaded CSV data sets: checked against this size, stored under MEDIA_ROOT (inside
# the git-ignored var/ by default) and never served back: there is no MEDIA_URL route.
MLTRACK_MAX_UPLOAD_MB = env_int("MLTRACK_MAX_UPLOAD_MB", 20, minimum=1)
MEDIA_ROOT = Path(os.getenv("MEDIA_ROOT", str(BASE_DIR / "var" / "media")))
# How many sessions train at once across all workers; the others wait as queued and
# their task looks again every MLTRACK_QUEUE_RETRY_SECONDS.
MLTRACK_MAX_CONCURRENT_RUNS = env_int("MLTRACK_MAX_CONCURRENT_RUNS", 2, minimum=1)
MLTRACK_QUEUE_RETRY_SECONDS = env_int("MLTRACK_QUEUE_RETRY_SECONDS", 3, minimum=1)
# A running session whose heartbeat (every 5 s) is older than this is failed as
# "worker lost" by the check every worker runs every MLTRACK_LOST_CHECK_SECONDS;
# 30 + 10 keeps the promise of "within 60 seconds".
MLTRACK_HEARTBEAT_TIMEOUT = env_int("MLTRACK_HEARTBEAT_TIMEOUT", 30, minimum=10)
MLTRACK_LOST_CHECK_SECONDS = env_int("MLTRACK_LOST_CHECK_SECONDS", 10, minimum=1)
# A message a dead worker had taken (a queued session it had reserved, or a retry
# waiting for a slot) goes back to the queue after this many seconds. Redelivering a
# running or finished session's message is harmless: only a queued session starts.
MLTRACK_REDELIVERY_SECONDS = env_int("MLTRACK_REDELIVERY_SECONDS", 300, minimum=5)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": MLTRACK_REDELIVERY_SECONDS}

# Production hardening: only when DEBUG is off, so local HTTP development works.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if not DEBUG:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

# Worker processes run this much nicer than the web process (0 to 19): training
# that fills every core must not delay live events (bench/NOTES.md).
MLTRACK_WORKER_NICENESS = env_int("MLTRACK_WORKER_NICENESS", 10, minimum=0)
# The worker's thread switch interval (sys.setswitchinterval), in microseconds;
# Python's default is 5000 (mltrack/celery.py says why it is shorter).
MLTRACK_WORKER_SWITCH_MICROSECONDS = env_int(
    "MLTRACK_WORKER_SWITCH_MICROSECONDS", 100, minimum=1
)
# How many of a worker process's runs compute at the same moment; the others
# wait for a turn at an epoch or chunk boundary (sessions.tasks.TrainingTurns).
MLTRACK_WORKER_TRAINING_SLOTS = env_int("MLTRACK_WORKER_TRAINING_SLOTS", 1, minimum=1)
# How long the worker keeps retrying a write while the database is unavailable or
# locked before it gives up on the run.
MLTRACK_DB_RETRY_SECONDS = env_int("MLTRACK_DB_RETRY_SECONDS", 60, minimum=0)
