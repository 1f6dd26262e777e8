"""Django settings for costpass, read from environment variables (see .env.example).

The embedded default needs no services: a SQLite file, a filesystem Celery broker and the CPU
model. Setting DATABASE_URL (Postgres) and CELERY_BROKER_URL (Redis) runs the same code on the
real services.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from routerapp.env import env_bool, env_float, env_int, env_list, env_str, load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env")

# Runtime files of the embedded default (SQLite, broker folders, results) live here.
VAR_DIR = Path(env_str("COSTPASS_VAR_DIR", str(BASE_DIR / "var")))

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be at least 32 characters")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_htmx",
    "routerapp",
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
    "django_htmx.middleware.HtmxMiddleware",
    "routerapp.api.auth.RateLimitHeadersMiddleware",
]
if env_bool("COSTPASS_METRICS", True):
    # Outermost, so that it times and counts every answer, errors included.
    MIDDLEWARE.insert(0, "routerapp.middleware.MetricsMiddleware")

ROOT_URLCONF = "routerapp.urls"
WSGI_APPLICATION = "routerapp.wsgi.application"

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

# --- database -----------------------------------------------------------------------------------
_default_db = f"sqlite:///{VAR_DIR / 'costpass.sqlite3'}"
try:
    DATABASES = {
        "default": dj_database_url.parse(
            env_str("DATABASE_URL", _default_db), conn_max_age=60, conn_health_checks=True
        )
    }
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's, skipping the per-request health check of a connection used a moment ago
    # (routerapp/dbbackends/postgresql).
    DATABASES["default"]["ENGINE"] = "routerapp.dbbackends.postgresql"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the worker share one file: WAL lets readers run beside the writer, and
    # IMMEDIATE transactions take the write lock up front instead of failing on upgrade.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file, not memory, so a worker subprocess in the tests can open the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- cache (rate limits, streaming): Redis when configured, else files under var/ -------------
REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "costpass",
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- auth, i18n, static -------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(VAR_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve app and project static files even before collectstatic has run (tests, first start);
# collectstatic adds compressed copies for production.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- REST framework and schema ------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["routerapp.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["routerapp.api.parsers.StrictJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "routerapp.api.errors.openai_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "costpass API",
    "DESCRIPTION": "OpenAI-compatible gateway that routes each request to the model and "
    "test-time strategy with the lowest expected cost-of-pass.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Celery -------------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_RESULT_BACKEND = env_str(
    "CELERY_RESULT_BACKEND",
    "redis://" + CELERY_BROKER_URL.removeprefix("redis://")
    if CELERY_BROKER_URL.startswith("redis://")
    else f"file://{VAR_DIR / 'celery' / 'results'}",
)
CELERY_BROKER_DIR = VAR_DIR / "celery" / "broker"
# A task that runs past the hard limit is killed; the broker must not redeliver it before then.
QUERY_SOFT_TIME_LIMIT_S = env_int("COSTPASS_QUERY_SOFT_TIME_LIMIT_S", 600, minimum=1)
QUERY_HARD_TIME_LIMIT_S = env_int("COSTPASS_QUERY_HARD_TIME_LIMIT_S", 660, minimum=2)
if QUERY_HARD_TIME_LIMIT_S <= QUERY_SOFT_TIME_LIMIT_S:
    raise ImproperlyConfigured(
        "COSTPASS_QUERY_HARD_TIME_LIMIT_S must be larger than COSTPASS_QUERY_SOFT_TIME_LIMIT_S"
    )
TRAINING_SOFT_TIME_LIMIT_S = env_int("COSTPASS_TRAINING_SOFT_TIME_LIMIT_S", 3600, minimum=1)
TRAINING_HARD_TIME_LIMIT_S = env_int("COSTPASS_TRAINING_HARD_TIME_LIMIT_S", 3700, minimum=2)
CELERY_VISIBILITY_TIMEOUT_S = max(QUERY_HARD_TIME_LIMIT_S, TRAINING_HARD_TIME_LIMIT_S) + 300
# Crash recovery (services.execution, task queries_reap run by Celery beat). A running query's
# process refreshes its heartbeat every QUERY_HEARTBEAT_S; one silent for QUERY_STALE_S lost its
# process: the samples it was generating are billed at an upper bound and it is queued again
# (at most QUERY_MAX_ATTEMPTS runs, each within its reservation) or failed and settled. A queued
# query nobody took within QUERY_REDISPATCH_S is handed to the broker again (a lost message, a
# restarted Redis); one still queued after QUERY_QUEUE_TIMEOUT_S is failed and released.
QUERY_HEARTBEAT_S = env_float("COSTPASS_QUERY_HEARTBEAT_S", 5.0, minimum=0.1)
QUERY_STALE_S = env_float("COSTPASS_QUERY_STALE_S", 30.0, minimum=1.0)
if QUERY_STALE_S <= 2 * QUERY_HEARTBEAT_S:
    raise ImproperlyConfigured(
        "COSTPASS_QUERY_STALE_S must be more than twice COSTPASS_QUERY_HEARTBEAT_S"
    )
QUERY_MAX_ATTEMPTS = env_int("COSTPASS_QUERY_MAX_ATTEMPTS", 3, minimum=1)
QUERY_REDISPATCH_S = env_float("COSTPASS_QUERY_REDISPATCH_S", 60.0, minimum=1.0)
QUERY_QUEUE_TIMEOUT_S = env_float("COSTPASS_QUERY_QUEUE_TIMEOUT_S", 3600.0, minimum=1.0)
REAP_INTERVAL_S = env_float("COSTPASS_REAP_INTERVAL_S", 15.0, minimum=0.5)
# Rows from before heartbeats (none set) fall back to the hard time limit plus this grace.
REAP_GRACE_S = env_int("COSTPASS_REAP_GRACE_S", 300, minimum=0)
CELERY_BEAT_SCHEDULE = {
    "reap-stale-queries": {
        "task": "costpass.queries_reap",
        "schedule": REAP_INTERVAL_S,
        "options": {"queue": "default", "expires": REAP_INTERVAL_S * 4},
    },
    "budget-alerts": {
        "task": "costpass.budget_alerts_deliver",
        "schedule": 60.0,
        "options": {"queue": "default", "expires": 240},
    },
    "texts-retention": {
        "task": "costpass.texts_retention",
        "schedule": 60.0,
        "options": {"queue": "default", "expires": 240},
    },
    # While no router version passes the floor, the best single configuration serves and the
    # router is retrained as graded outcomes accumulate (it serves once it passes).
    "retrain-router-when-due": {
        "task": "costpass.router_retrain_due",
        "schedule": 600.0,
        "options": {"queue": "default", "expires": 1200},
    },
}

# --- product limits -----------------------------------------------------------------------------
MAX_PROMPT_CHARS = env_int("COSTPASS_MAX_PROMPT_CHARS", 32_000, minimum=1)
MAX_REQUEST_BYTES = env_int("COSTPASS_MAX_REQUEST_BYTES", 1_000_000, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES
# How long a synchronous API call waits for its query before answering "still running".
SYNC_WAIT_S = env_float("COSTPASS_SYNC_WAIT_S", 120.0, minimum=0.0)
# One sample on a remote OpenAI-compatible endpoint is served by the web process itself (same
# routing, budget and ledger, no queue hop); false sends every query through Celery.
INLINE_REMOTE_SINGLE = env_bool("COSTPASS_INLINE_REMOTE_SINGLE", True)
LLAMA_THREADS = env_int("COSTPASS_LLAMA_THREADS", 1, minimum=1)
# Dashboards' rollup refresh: at most one per group per this many seconds, off the request
# path (0: refresh synchronously when a query finishes).
ROLLUP_DEBOUNCE_S = env_float("COSTPASS_ROLLUP_DEBOUNCE_S", 2.0, minimum=0.0)
# Unfinished queries one benchmark run keeps in the engine queues (the rest wait their turn).
BENCHMARK_IN_FLIGHT = env_int("COSTPASS_BENCHMARK_IN_FLIGHT", 2, minimum=1)
# Bounded exploration of the active router when it serves (learning online from grades).
ROUTER_EXPLORE = env_bool("COSTPASS_ROUTER_EXPLORE", True)
# Resilience (services.breakers, services.attempts): a query tries at most this many
# (configuration, deployment) attempts, falling back along the router's alternatives.
MAX_ATTEMPTS = env_int("COSTPASS_MAX_ATTEMPTS", 4, minimum=1)
# An upstream's circuit breaker opens after this many consecutive failures, stays open for the
# cool-down (doubling per consecutive trip, up to the maximum), then lets one probe through.
BREAKER_FAILURES = env_int("COSTPASS_BREAKER_FAILURES", 3, minimum=1)
BREAKER_COOLDOWN_S = env_float("COSTPASS_BREAKER_COOLDOWN_S", 30.0, minimum=0.0)
BREAKER_MAX_COOLDOWN_S = env_float("COSTPASS_BREAKER_MAX_COOLDOWN_S", 300.0, minimum=0.0)
# How long a process reuses its view of the breakers and deployments before re-reading them.
HEALTH_CACHE_S = env_float("COSTPASS_HEALTH_CACHE_S", 1.0, minimum=0.0)
# Where outcome tables and labelled sets are read from (never copied into the repository).
SHARED_DATA_DIR = env_str("COSTPASS_SHARED_DATA_DIR", str(BASE_DIR.parent / "shared"))

# --- data retention (services.retention, beat task texts-retention) ----------------------------
# Prompt, message, answer and sample texts of finished queries are deleted this many days after
# the query was created (0: kept). Tokens, costs, grades, tags and the router's prompt sketch stay.
TEXT_RETENTION_DAYS = env_int("COSTPASS_TEXT_RETENTION_DAYS", 0, minimum=0)
# false: "store no text" mode: texts are deleted as soon as a query has finished and its caller
# has had TEXT_READ_GRACE_S to read the answer (a synchronous call or a poll).
STORE_TEXT = env_bool("COSTPASS_STORE_TEXT", True)
TEXT_READ_GRACE_S = env_int("COSTPASS_TEXT_READ_GRACE_S", 300, minimum=0)

# --- budget alerts (services.alerts) --------------------------------------------------------
# Percent of a budget's limit spent at which it alerts, unless the policy sets its own.
BUDGET_ALERT_THRESHOLDS = [
    int(x) for x in env_list("COSTPASS_BUDGET_ALERT_THRESHOLDS", ["50", "80", "100"])
]
# Key of the HMAC-SHA256 signature of alert webhooks (x-costpass-signature: sha256=<hex>).
ALERT_WEBHOOK_SECRET = env_str("COSTPASS_ALERT_WEBHOOK_SECRET", "")
ALERT_WEBHOOK_TIMEOUT_S = env_float("COSTPASS_ALERT_WEBHOOK_TIMEOUT_S", 5.0, minimum=0.1)
EMAIL_BACKEND = env_str("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("DJANGO_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("DJANGO_EMAIL_PORT", 25, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL", "costpass@localhost")

# --- metrics (Prometheus) ---------------------------------------------------------------------
# Every web and worker process writes its counters into one directory (prometheus_client's
# multiprocess mode) and GET /metrics merges them. It must be set before prometheus_client is
# imported, hence here; `make run` empties it at start. Off: no counting, /metrics answers 404.
METRICS_ENABLED = env_bool("COSTPASS_METRICS", True)
METRICS_DIR = Path(env_str("COSTPASS_METRICS_DIR", str(VAR_DIR / "metrics")))
if METRICS_ENABLED and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)
# /metrics answers a request bearing this token, or one from these networks (CIDR).
METRICS_TOKEN = env_str("COSTPASS_METRICS_TOKEN", "")
METRICS_ALLOWED_NETWORKS = env_list(
    "COSTPASS_METRICS_ALLOWED_NETWORKS", ["127.0.0.1/32", "::1/128"]
)

# --- tracing (OpenTelemetry, the optional `otel` extra) --------------------------------------
# Off by default; on, every web and worker process traces each query (Django, Celery, httpx and
# psycopg instrumentations plus costpass's own spans) and sends the spans to an OTLP collector
# (HTTP/protobuf; OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, ... are read by the
# exporter itself) or prints them (console).
OTEL_ENABLED = env_bool("COSTPASS_OTEL", False)
OTEL_EXPORTER = env_str("COSTPASS_OTEL_EXPORTER", "otlp")
if OTEL_EXPORTER not in ("otlp", "console"):
    raise ImproperlyConfigured(
        f"COSTPASS_OTEL_EXPORTER must be otlp or console, not {OTEL_EXPORTER!r}"
    )
OTEL_SERVICE_NAME = env_str("OTEL_SERVICE_NAME", "costpass")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("COSTPASS_LOG_LEVEL", "INFO")},
    # httpx logs every upstream request at INFO: one line per gateway call is noise and CPU.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}
