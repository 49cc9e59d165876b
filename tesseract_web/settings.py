"""Tesseract settings, read from the environment (see `.env.example`).

Two environments, told apart by `TESSERACT_ENV`:

* `local` (the default: `make run`, the tests, `manage.py` on a laptop) runs like
  production — DEBUG off, static files served by WhiteNoise, styled error pages —
  but needs no configuration: SQLite, an embedded Redis, and `SECRET_KEY` and
  `API_KEY_PEPPER` generated once and kept in `var/secrets.json` (mode 0600) when
  the environment does not give them.
* `production` requires `SECRET_KEY` and `API_KEY_PEPPER` from the environment (or
  `*_FILE`), and refuses `DEBUG=1`.

`DEBUG=1` (local only) turns Django's debug pages on for those who ask.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url

from accounts import redis_client
from tesseract_web import embedded_redis, local_secrets
from tesseract_web.env import (
    ImproperlyConfiguredEnv,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_secret,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("TESSERACT_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)  # SQLite file, collected static, local secrets

TESSERACT_ENV = env_choice("TESSERACT_ENV", "local", ("local", "production"))
PRODUCTION = TESSERACT_ENV == "production"
DEBUG = env_bool("DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfiguredEnv("DEBUG=1 is refused when TESSERACT_ENV=production")


def _secret(name: str) -> str:
    """From the environment; outside production, else from `var/secrets.json`."""
    value = env_secret(name, "") or ""
    if not value and not PRODUCTION:
        value = local_secrets.load_or_create(VAR_DIR)[name]
    if not value:
        raise ImproperlyConfiguredEnv(f"{name} must be set when TESSERACT_ENV=production")
    return value


SECRET_KEY = _secret("SECRET_KEY")
#: Pepper of the API-key HMAC. Separate from SECRET_KEY so rotating sessions does not
#: invalidate every key.
API_KEY_PEPPER = _secret("API_KEY_PEPPER")

#: Fernet keys sealing provider credentials (`backends.sealing`), comma-separated; the
#: first seals, all unseal. Outside production one is generated into var/secrets.json
#: when none is given; in production, providers cannot take a credential without it.
TESSERACT_SEALING_KEYS = env_secret("TESSERACT_SEALING_KEYS", "") or ""
TESSERACT_SEALING_KEYS_GENERATED = not TESSERACT_SEALING_KEYS and not PRODUCTION
if TESSERACT_SEALING_KEYS_GENERATED:
    TESSERACT_SEALING_KEYS = local_secrets.load_or_create(VAR_DIR)["TESSERACT_SEALING_KEYS"]

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "axes",
    "accounts",
    "backends",
    "routing",
    "billing",
    "dashboards",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "accounts.middleware.RequireTwoFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into our lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "tesseract_web.urls"
#: Two processes serve two audiences (see `tesseract_web/asgi.py`): `asgi:gateway` is
#: `/v1` and `/metrics`, `asgi:web` the dashboard, console and admin.
#: `asgi:application` (both in one) is for tests and benchmarks only.
ASGI_APPLICATION = "tesseract_web.asgi.application"
WSGI_APPLICATION = "tesseract_web.wsgi.application"

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

# --------------------------------------------------------------------------- data stores

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'tesseract.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, so that a worker process started by a test sees the same data.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    # `make run` writes from the web, the gateway, the worker and beat at once. WAL
    # lets readers and one writer proceed together; IMMEDIATE transactions take the
    # write lock when they begin, so a writer waits (up to the busy timeout) instead
    # of failing with "database is locked" when it upgrades a read lock mid-way.
    # (WAL is switched on by `tesseract_web.sqlite`, once per file, race-free.)
    DATABASES["default"]["ENGINE"] = "tesseract_web.sqlite"
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": env_int("SQLITE_BUSY_TIMEOUT_S", 30, minimum=1),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "") or embedded_redis.start()
#: Celery's broker and Channels' layer: REDIS_URL unless set. Neither runs on Redis
#: Cluster (kombu and channels_redis have no Cluster support), so with a
#: `redis+cluster://` REDIS_URL this names a single server or Sentinel beside it.
REDIS_BROKER_URL = env_str("REDIS_BROKER_URL", "") or REDIS_URL
try:
    _channels_host = redis_client.channels_host(REDIS_BROKER_URL)
    CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS = redis_client.celery_broker(
        REDIS_BROKER_URL
    )
except ValueError as exc:
    raise ImproperlyConfiguredEnv(str(exc)) from None

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [_channels_host]},
    }
}

CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 120, minimum=1)
#: The queue beat sends to and workers read: separate environments sharing one Redis.
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "celery")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --------------------------------------------------------------------------- auth

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # First, as django-axes asks: it refuses a locked-out account or address before
    # the password is even hashed.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
#: Sign-in throttle (django-axes): this many failures for one account, or from one
#: address, lock it out for the cool-off; a success resets the count.
AXES_FAILURE_LIMIT = env_int("TESSERACT_LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("TESSERACT_LOGIN_COOLOFF_MIN", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own: account OR address
AXES_RESET_ON_SUCCESS = True
#: The sign-in form's field, normalized (case, spaces) so "Alice@X" counts as "alice@x".
AXES_USERNAME_CALLABLE = "accounts.views.login_username"
#: Tries during the lock are refused unchecked and do not extend it, so "wait N
#: minutes" stays true; a guesser still gets only AXES_FAILURE_LIMIT tries per cool-off.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "accounts.views.login_locked_out"
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "dashboards:home"
LOGOUT_REDIRECT_URL = "accounts:login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
OTP_TOTP_ISSUER = "Tesseract"
#: Sign-up links (a signed token carrying the address and the organization's name)
#: stay valid this long (hours); password-reset links as long.
TESSERACT_SIGNUP_LINK_MAX_AGE_H = env_int("TESSERACT_SIGNUP_LINK_MAX_AGE_H", 48, minimum=1)
PASSWORD_RESET_TIMEOUT = env_int("PASSWORD_RESET_TIMEOUT_H", 24, minimum=1) * 3600

# --------------------------------------------------------------------------- email

#: Sign-up links, password resets and budget alerts go through Django's email framework.
#: The console backend (mail printed to the web's output) unless configured: set
#: EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend and EMAIL_HOST etc.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD", "") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Tesseract <noreply@localhost>")
#: Staff always need a second factor; organizations can require it of their members.
TESSERACT_STAFF_REQUIRE_2FA = env_bool("TESSERACT_STAFF_REQUIRE_2FA", True)

# --------------------------------------------------------------------------- tesseract

#: The region this gateway runs in (a region slug of the catalog).
TESSERACT_GATEWAY_REGION = env_str("TESSERACT_GATEWAY_REGION", "westeurope")
#: Every region that runs gateways (comma-separated slugs). The beat schedules a latency
#: probe round for each, on that region's own queue (`<CELERY_QUEUE>.probes.<region>`),
#: so that a worker *in* that region measures its row of the latency map.
TESSERACT_GATEWAY_REGIONS = env_list("TESSERACT_GATEWAY_REGIONS", [TESSERACT_GATEWAY_REGION])
#: API keys: how long a resolved key stays in a process's cache without news from
#: Redis (revocations arrive by pub/sub within milliseconds; this is the backstop).
TESSERACT_KEY_CACHE_TTL_S = env_int("TESSERACT_KEY_CACHE_TTL_S", 30, minimum=1)
# Rate limits and budgets on /v1 (billing.limits). 0 switches them off: for the
# benchmark's "off" run only (suspension still applies).
TESSERACT_LIMITS = env_bool("TESSERACT_LIMITS", True)
#: Call a backend we run in the same round trip as the admission, when the key's last
#: answer left room to spare (routing.gateway.admission.Admission.overlap); 0: always
#: wait for the admission's answer before calling any backend.
TESSERACT_ADMISSION_OVERLAP = env_bool("TESSERACT_ADMISSION_OVERLAP", True)
#: Admit a non-streamed request with room to spare once it has been served, in one
#: atomic step with its usage record (routing.gateway.admission.Admission.defer): one
#: Redis command a request instead of two; 0: admit it before (or beside) the call.
TESSERACT_ADMISSION_DEFER = env_bool("TESSERACT_ADMISSION_DEFER", True)
#: A WebSocket on /v1/stream that has not authenticated within this is closed (seconds).
TESSERACT_WS_AUTH_TIMEOUT_S = env_int("TESSERACT_WS_AUTH_TIMEOUT_S", 5, minimum=1)

#: The cyclic garbage collector in ASGI processes (tesseract_web.asgi._settle_heap).
TESSERACT_GC_FREEZE = env_bool("TESSERACT_GC_FREEZE", True)
TESSERACT_GC_THRESHOLDS = tuple(
    int(n) for n in env_list("TESSERACT_GC_THRESHOLDS", ["10000", "20", "20"])
)
#: How often a gateway re-reads the catalog without being told of a change (seconds).
TESSERACT_WORLD_REFRESH_S = env_int("TESSERACT_WORLD_REFRESH_S", 30, minimum=1)
#: ... and the live maps in Redis, at the latest (changes are announced at once).
TESSERACT_LIVE_REFRESH_S = env_int("TESSERACT_LIVE_REFRESH_S", 1, minimum=1)
#: A request without max_latency_ms must finish within this (seconds).
TESSERACT_DEADLINE_S = env_int("TESSERACT_DEADLINE_S", 120, minimum=1)
#: A backend that sends no first token within this is skipped for the next (seconds).
TESSERACT_FIRST_TOKEN_TIMEOUT_S = env_int("TESSERACT_FIRST_TOKEN_TIMEOUT_S", 15, minimum=1)
#: A stream whose backend sends nothing for this long after its first token is ended
#: with an error event (seconds); the request's deadline bounds it too.
TESSERACT_STALL_TIMEOUT_S = env_int("TESSERACT_STALL_TIMEOUT_S", 10, minimum=1)

#: A session's affinity to the deployment holding its context expires after this
#: much silence (seconds).
TESSERACT_AFFINITY_TTL_S = env_int("TESSERACT_AFFINITY_TTL_S", 900, minimum=1)

#: Whether an organization may register a private cluster endpoint on this machine's
#: own addresses (loopback, link-local such as a cloud's metadata service, 0.0.0.0):
#: never in production, where the gateways and workers would call them for a tenant.
TESSERACT_PRIVATE_ENDPOINTS_ALLOW_LOCAL = env_bool("TESSERACT_PRIVATE_ENDPOINTS_ALLOW_LOCAL", False)

#: Active health checks: how often, and how long one may take (seconds).
TESSERACT_HEALTH_INTERVAL_S = env_int("TESSERACT_HEALTH_INTERVAL_S", 2, minimum=1)
TESSERACT_HEALTH_TIMEOUT_S = env_int("TESSERACT_HEALTH_TIMEOUT_S", 2, minimum=1)

#: Latency probes from this gateway's region to every cluster: how often (seconds),
#: the weight of a new sample in the smoothed RTT (percent), how long the time series
#: (`LatencyProbe` rows) is kept (hours).
TESSERACT_PROBE_INTERVAL_S = env_int("TESSERACT_PROBE_INTERVAL_S", 2, minimum=1)
TESSERACT_PROBE_EWMA_ALPHA_PCT = env_int("TESSERACT_PROBE_EWMA_ALPHA_PCT", 30, minimum=1)
TESSERACT_PROBE_RETENTION_H = env_int("TESSERACT_PROBE_RETENTION_H", 24, minimum=1)
#: The resource map: backends' metrics are scraped this often (seconds); completed
#: requests are folded into observed TTFT and decode speed this often (seconds), each
#: weighing this much in the moving averages (percent), and the requests of a span of
#: time weighing together no more than that span over this time constant allows
#: (milliseconds; 0: no such bound) — backends.livestate.fold_weight.
TESSERACT_SCRAPE_INTERVAL_S = env_int("TESSERACT_SCRAPE_INTERVAL_S", 1, minimum=1)
TESSERACT_OBSERVED_INTERVAL_S = env_int("TESSERACT_OBSERVED_INTERVAL_S", 2, minimum=1)
TESSERACT_OBSERVED_EWMA_ALPHA_PCT = env_int("TESSERACT_OBSERVED_EWMA_ALPHA_PCT", 20, minimum=1)
TESSERACT_OBSERVED_TIME_CONSTANT_MS = env_int(
    "TESSERACT_OBSERVED_TIME_CONSTANT_MS", 1000, minimum=0
)
if TESSERACT_PROBE_EWMA_ALPHA_PCT > 100 or TESSERACT_OBSERVED_EWMA_ALPHA_PCT > 100:
    raise ImproperlyConfiguredEnv("the *_EWMA_ALPHA_PCT settings are percentages: 1 to 100")
#: Placement weighs the demand (requests by client region × model) of this many seconds.
TESSERACT_PLACEMENT_WINDOW_S = env_int("TESSERACT_PLACEMENT_WINDOW_S", 900, minimum=60)

#: The Redis stream that carries usage from the gateways to the billing worker.
TESSERACT_USAGE_STREAM = env_str("TESSERACT_USAGE_STREAM", "tesseract:usage")

#: Public base URLs of the two processes (`make run` sets both): the gateway redirects
#: a browser that lands on it to the web; the web tells an API client that calls it
#: where the gateway is. Empty: each answers 404 without the pointer.
TESSERACT_WEB_URL = env_str("TESSERACT_WEB_URL", "")
TESSERACT_GATEWAY_URL = env_str("TESSERACT_GATEWAY_URL", "")

#: Where the backend simulator listens (the demo world's deployments point there).
TESSERACT_SIMULATOR_URL = env_str("TESSERACT_SIMULATOR_URL", "http://127.0.0.1:8100")

#: `GET /metrics` requires `Authorization: Bearer <this>` when set; empty: open (then
#: keep it reachable by the scraper only, never from the internet).
TESSERACT_METRICS_TOKEN = env_secret("TESSERACT_METRICS_TOKEN", "") or ""
#: An OTLP/HTTP collector (e.g. http://otel-collector:4318): a span per request is
#: exported there (the `otel` extra); empty: no export, and OpenTelemetry is not imported.
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT", "")

STRIPE_SECRET_KEY = env_secret("STRIPE_SECRET_KEY", "")
STRIPE_WEBHOOK_SECRET = env_secret("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "")  # e.g. a local localstripe server

# --------------------------------------------------------------------------- api

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.CursorPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {"TITLE": "Tesseract management API", "VERSION": "1"}
#: Every management API error in the /v1 shape: {"error": {message, type, param, code}}.
REST_FRAMEWORK["EXCEPTION_HANDLER"] = "billing.api.errors.handler"
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {  # type: ignore[assignment]
    "InvoiceStatusEnum": "billing.models.Invoice.Status",
    "UsageStatusEnum": "billing.models.UsageEvent.Status",
}

# --------------------------------------------------------------------------- misc

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns at start-up if it is missing
STATICFILES_DIRS = [BASE_DIR / "static"]
#: WhiteNoise serves /static/ from the web process (no nginx needed). Production
#: serves what `collectstatic` wrote, with hashed names cached forever; locally the
#: files are found where they are, so the tests need no collectstatic.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # The control plane polls every backend every second or two: one line per poll
    # would drown everything else.
    "loggers": {
        "httpx": {"level": "WARNING"},
        # django-axes logs every sign-in at INFO; lockouts and failures stay visible.
        "axes": {"level": "WARNING"},
        # The worker and beat run a dozen tasks a second: "received", "succeeded",
        # "sending due task" and "discarding expired task" lines, and a line per
        # flagged probe (also kept in the database and shown on the console), at INFO
        # would bury everything else (and the demo key `make run` prints).
        # TESSERACT_LOG_LEVEL=INFO brings them back.
        **{
            name: {"level": env_str("TESSERACT_LOG_LEVEL", "WARNING").upper()}
            for name in (
                "celery.app.trace",
                "celery.worker.strategy",
                "celery.worker.request",
                "celery.beat",
                "backends.probes",
            )
        },
    },
}
