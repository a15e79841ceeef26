"""Settings for chatusage: one module, every value read from the environment.

Names and defaults are the README's configuration table. A fresh clone runs
with nothing configured (SQLite, local memory cache, offline demo model, no
PostHog); production refuses to start without SECRET_KEY.
"""

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import environ
from django.core.exceptions import ImproperlyConfigured

from chatusage.parsing import percentages

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A .env file beside manage.py is read if present; real environment variables win.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off. Set SECRET_KEY in the environment "
            "(for example: python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
            "or set DEBUG=true for local development."
        )
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "chatusage.api.csrf_failure"
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024  # a chat prompt is at most 8,000 characters
# chatusage.asgi refuses a larger body (413) before reading it, and one that takes longer
# than this many seconds to arrive (408).
REQUEST_BODY_TIMEOUT = env.float("REQUEST_BODY_TIMEOUT", default=30.0)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "csp",
    "axes",
    "chatusage",
    "accounts",
    "usage",
    "chat",
    "billing",
]

# Django's middleware as it is, except that under ASGI the hooks that do no I/O run in the
# event loop instead of a thread each (chatusage/middleware.py).
MIDDLEWARE = [
    "chatusage.middleware.SecurityMiddleware",
    "chatusage.middleware.StaticFilesMiddleware",
    "chatusage.middleware.SessionMiddleware",
    "chatusage.middleware.CommonMiddleware",
    "chatusage.middleware.CsrfViewMiddleware",
    "chatusage.middleware.AuthenticationMiddleware",
    "chatusage.middleware.MessageMiddleware",
    "chatusage.middleware.XFrameOptionsMiddleware",
    "chatusage.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a lockout signal into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# Content-Security-Policy: scripts only from our own static files (no inline script or
# handler anywhere), nothing from other origins, no framing. Inline style attributes stay
# allowed: the server-drawn chart and the admin use them, and they cannot run code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

ROOT_URLCONF = "chatusage.urls"
WSGI_APPLICATION = "chatusage.wsgi.application"

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
                "chatusage.context_processors.product",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes the write lock when a transaction starts, so two budget
    # reservations can never both read the same spend (SQLite has no row locks).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's own pool (psycopg_pool), one per worker process. The chat path returns its
    # connection to the pool after every short ledger step, so hundreds of streams waiting
    # on the model hold no connection: a worker never uses more than DB_POOL_MAX_SIZE.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps connections, not Django
    # Each connection is checked at checkout: after a database restart or failover the pool
    # hands out a fresh one, not a dead one (a 500). Our backend does that without the empty
    # query Django's sends, a round trip on every checkout (chatusage/postgresql/base.py).
    DATABASES["default"]["ENGINE"] = "chatusage.postgresql"
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=10),
        "timeout": env.float("DB_POOL_TIMEOUT", default=10.0),
        # psycopg_pool retries a failed connect with a doubling delay, and requests already
        # waiting do not start a new attempt when one gives up: after a long outage the
        # app stayed down long after the database was back. So an attempt gives up after
        # a few seconds and a fresh one starts at once (check() grows the pool again).
        # Dead idle connections are swept by chatusage.db.watch_pool.
        "reconnect_timeout": env.float("DB_POOL_RECONNECT_TIMEOUT", default=4.0),
        "reconnect_failed": lambda pool: pool.check(),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The README names the local memory cache locmem://; django-environ calls it locmemcache://.
_cache_url = env.str("CACHE_URL", default="locmem://")
if _cache_url.startswith("locmem://"):
    _cache_url = "locmemcache://" + _cache_url.removeprefix("locmem://")
CACHES = {"default": env.cache_url_config(_cache_url)}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    CACHES["default"]["BACKEND"] = "chatusage.cache.RedisCache"  # one client, not one a call
    # A dead or hanging Redis must cost a request half a second, not the OS's TCP timeouts.
    CACHES["default"].setdefault("OPTIONS", {}).update(
        socket_connect_timeout=env.float("CACHE_TIMEOUT", default=0.5),
        socket_timeout=env.float("CACHE_TIMEOUT", default=0.5),
    )

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Accounts -----------------------------------------------------------------
# django-axes records failed logins: after LOGIN_FAILURE_LIMIT failures for one username
# or from one address, that username or address is locked out for LOGIN_LOCKOUT_MINUTES
# (staff unlock in admin, Axes > Access attempts, or `manage.py axes_reset_username`).
# accounts.backends.UserBackend is Django's ModelBackend with the signed-in user's row read by
# one plain statement; ModelBackend stays listed for sessions signed in before it (a failed
# sign-in never reaches it: its password is hashed once).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "accounts.backends.UserBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_LOCKOUT_MINUTES", default=15))
# A username and an address together: one person's failures do not lock out the others
# behind the same address (a shared office), nor the account's owner elsewhere.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.views.locked_out"
# Behind a proxy, the client address comes from X-Forwarded-For: say how many proxies.
AXES_IPWARE_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0) or None
AXES_IPWARE_META_PRECEDENCE_ORDER = (
    ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"] if AXES_IPWARE_PROXY_COUNT else ["REMOTE_ADDR"]
)

# open: anyone may sign up; closed: staff create accounts in admin.
ACCOUNTS_SIGNUP = env.str("ACCOUNTS_SIGNUP", default="open")
if ACCOUNTS_SIGNUP not in {"open", "closed"}:
    raise ImproperlyConfigured("ACCOUNTS_SIGNUP must be open or closed.")
SIGNUP_RATE_LIMIT = env.str("SIGNUP_RATE_LIMIT", default="5/3600")  # sign-ups per address

# Email: EMAIL_URL as django-environ reads it (smtp://user:pass@host:587/?tls=True, ...).
# Without it, mails are printed to the log (consolemail://), and addresses are not verified.
EMAIL_CONFIGURED = bool(env.str("EMAIL_URL", default=""))
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="chatusage <noreply@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Until a new account's address is verified it has no budget: it can log in, not chat.
ACCOUNTS_VERIFY_EMAIL = env.bool("ACCOUNTS_VERIFY_EMAIL", default=EMAIL_CONFIGURED)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
# Pages show times in the billing time zone (USAGE_TIME_ZONE, below).
TIME_ZONE = env.str("USAGE_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Django's database sessions, read with one plain statement instead of an ORM query.
SESSION_ENGINE = "chatusage.sessions"

# Security: on whenever DEBUG is off, so `manage.py check --deploy` is clean.
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the chat page's script reads it to POST JSON
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    # Only a local plain-HTTP run of production settings (the load tests) turns these off.
    SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    # Both bind every subdomain of the site's domain (preload: for a year, in browsers'
    # built-in lists), which only the domain's owner can decide: opt in by environment.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    # check --deploy warns while they are off; off is the deliberate default here.
    SILENCED_SYSTEM_CHECKS = [
        # These look for Django's dotted paths; chatusage.checks asks the same of our
        # subclasses (chatusage/middleware.py) as chatusage.W001-W003.
        "security.W001",
        "security.W002",
        "security.W003",
        *(["security.W005"] if not SECURE_HSTS_INCLUDE_SUBDOMAINS else []),
        *(["security.W021"] if not SECURE_HSTS_PRELOAD else []),
    ]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stdout"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # httpx2/urllib3 debug lines can carry Authorization headers: keep them quiet.
        "httpx2": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        "posthog": {"level": "WARNING"},
        "axes": {"level": "WARNING"},  # lockouts are warnings; it greets every start at INFO
        "psycopg": {"level": env.str("DB_LOG_LEVEL", default="WARNING")},  # pool events
    },
}

# --- OpenAI ---------------------------------------------------------------
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
OPENAI_MODEL = env.str("OPENAI_MODEL", default="gpt-4o-mini")
OPENAI_MAX_TOKENS = env.int("OPENAI_MAX_TOKENS", default=500)
OPENAI_TIMEOUT = env.float("OPENAI_TIMEOUT", default=30.0)  # one connect or read
# The hard limit on one turn: the call, its retries and Retry-After waits, and the stream,
# however slowly the client reads it. At the deadline the turn is cut and settled.
OPENAI_DEADLINE = env.float("OPENAI_DEADLINE", default=120.0)
# A reservation is a lease: the turn that holds it renews it every third of this while it
# runs, so a live call never loses its hold, whatever its age. Only a turn that stopped
# renewing (its worker was killed) lets the lease lapse; the next reserve() then releases it.
RESERVATION_LEASE_SECONDS = env.float("RESERVATION_LEASE_SECONDS", default=60.0)
_POSITIVE = ("OPENAI_MAX_TOKENS", "OPENAI_TIMEOUT", "OPENAI_DEADLINE", "RESERVATION_LEASE_SECONDS")
for _name in _POSITIVE:
    if globals()[_name] <= 0:
        raise ImproperlyConfigured(f"{_name} must be positive (it is {globals()[_name]}).")
# The model the offline demo answers as; priced like gpt-4o-mini in the price table.
DEMO_MODEL = "chatusage-demo"
DEMO_STREAM_DELAY = env.float("DEMO_STREAM_DELAY", default=0.02)
CHAT_SYSTEM_PROMPT = env.str(
    "CHAT_SYSTEM_PROMPT", default="You are a helpful assistant. Answer clearly and concisely."
)
CHAT_MAX_PROMPT_CHARS = 8000
# The conversation history sent with each prompt, measured in UTF-8 bytes (an
# upper bound on tokens), so the worst-case reservation stays bounded.
CHAT_HISTORY_BYTES = env.int("CHAT_HISTORY_BYTES", default=24000)
# A turn retries its settle this long while the database is away (set it below the lease,
# so no other call can take the budget meanwhile); then the answer waits on disk in
# CHAT_SPOOL_DIR for `manage.py settle_spooled` (chat/spool.py).
SETTLE_RETRY_SECONDS = env.float("SETTLE_RETRY_SECONDS", default=45.0)
CHAT_SPOOL_DIR = env.str("CHAT_SPOOL_DIR", default=str(BASE_DIR / "var" / "spool"))
CHAT_RATE_LIMIT = env.str("CHAT_RATE_LIMIT", default="20/60")  # requests / seconds per user
if not re.fullmatch(r"\d+/[1-9]\d*", CHAT_RATE_LIMIT):
    raise ImproperlyConfigured(
        f"CHAT_RATE_LIMIT must be requests/seconds such as 20/60 (0/60 turns it off), "
        f"not {CHAT_RATE_LIMIT!r}."
    )

# --- PostHog --------------------------------------------------------------
POSTHOG_API_KEY = env.str("POSTHOG_API_KEY", default="")
POSTHOG_HOST = env.str("POSTHOG_HOST", default="https://us.i.posthog.com").rstrip("/")


def _query_api_host(ingestion_host: str) -> str:
    """The app host serving /api/ for an ingestion host (us.i.posthog.com -> us.posthog.com)."""
    parts = urlsplit(ingestion_host)
    host = {"us.i.posthog.com": "us.posthog.com", "eu.i.posthog.com": "eu.posthog.com"}.get(
        parts.netloc, parts.netloc
    )
    return f"{parts.scheme}://{host}"


POSTHOG_API_HOST = env.str("POSTHOG_API_HOST", default=_query_api_host(POSTHOG_HOST)).rstrip("/")
POSTHOG_PROJECT_ID = env.str("POSTHOG_PROJECT_ID", default="")
POSTHOG_PERSONAL_API_KEY = env.str("POSTHOG_PERSONAL_API_KEY", default="")
POSTHOG_PRIVACY_MODE = env.bool("POSTHOG_PRIVACY_MODE", default=True)
POSTHOG_QUERY_TIMEOUT = env.tuple("POSTHOG_QUERY_TIMEOUT", cast=float, default=(3.05, 15.0))

# --- Usage ----------------------------------------------------------------
USAGE_SOURCE = env.str("USAGE_SOURCE", default="auto")
if USAGE_SOURCE not in {"auto", "posthog", "ledger"}:
    raise ImproperlyConfigured("USAGE_SOURCE must be one of auto, posthog, ledger.")
try:
    USAGE_TIME_ZONE = ZoneInfo(env.str("USAGE_TIME_ZONE", default="UTC"))
except (ZoneInfoNotFoundError, ValueError) as exc:
    raise ImproperlyConfigured(f"USAGE_TIME_ZONE is not a known time zone: {exc}") from exc


def _decimal(name: str, default: str, example: str) -> Decimal:
    """A decimal setting, or a start that stops naming it (negatives: the check below)."""
    try:
        return Decimal(env.str(name, default=default))
    except InvalidOperation as exc:
        raise ImproperlyConfigured(f"{name} must be {example}.") from exc


USAGE_DEFAULT_BUDGET_USD = _decimal("USAGE_DEFAULT_BUDGET_USD", "5.00", "an amount such as 5.00")
USAGE_DEFAULT_MESSAGE_LIMIT = env.int("USAGE_DEFAULT_MESSAGE_LIMIT", default=0)
# --- Billing ------------------------------------------------------------------
# The user's charge = provider cost x (1 + markup / 100), snapshotted on each generation
# when it is reserved: changing it never changes a recorded generation.
BILLING_MARKUP_PERCENT = _decimal("BILLING_MARKUP_PERCENT", "0", "a number such as 20")
BILLING_MODE = env.str("BILLING_MODE", default="off")
if BILLING_MODE not in ("off", "metered", "prepaid"):
    raise ImproperlyConfigured(
        f"BILLING_MODE must be off, metered or prepaid, not {BILLING_MODE!r}."
    )

_AMOUNT = "an amount in USD such as 5.00"
BILLING_SIGNUP_CREDIT_USD = _decimal("BILLING_SIGNUP_CREDIT_USD", "0", _AMOUNT)
BILLING_TOPUP_MIN_USD = _decimal("BILLING_TOPUP_MIN_USD", "5", _AMOUNT)
BILLING_TOPUP_MAX_USD = _decimal("BILLING_TOPUP_MAX_USD", "500", _AMOUNT)
BILLING_LOW_BALANCE_USD = _decimal("BILLING_LOW_BALANCE_USD", "1", _AMOUNT)
# Stripe (billing/stripe_api.py): off without a key. STRIPE_API_BASE points the official
# client at a local Stripe mock.
STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com").rstrip("/")
STRIPE_METER_EVENT_NAME = env.str("STRIPE_METER_EVENT_NAME", default="chatusage_usage")
STRIPE_METER_ID = env.str("STRIPE_METER_ID", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_TIMEOUT = env.float("STRIPE_TIMEOUT", default=10.0)  # seconds, one request
# Metered: web workers send new meter events after commit, in a background thread. Off when
# `manage.py send_meter_events --loop` runs as a service of its own, to keep that work (a
# Stripe request per answer) out of the processes that serve chat.
STRIPE_SEND_AFTER_COMMIT = env.bool("STRIPE_SEND_AFTER_COMMIT", default=True)
# How long a PostHog report is cached per (user, cycle), and the refresh throttle.
USAGE_CACHE_SECONDS = env.int("USAGE_CACHE_SECONDS", default=300)
USAGE_REFRESH_SECONDS = env.int("USAGE_REFRESH_SECONDS", default=60)
for _name in (
    "USAGE_DEFAULT_BUDGET_USD",
    "BILLING_MARKUP_PERCENT",
    "USAGE_DEFAULT_MESSAGE_LIMIT",
    "USAGE_CACHE_SECONDS",
    "USAGE_REFRESH_SECONDS",
    "CHAT_HISTORY_BYTES",
    "BILLING_SIGNUP_CREDIT_USD",
    "BILLING_TOPUP_MIN_USD",
    "BILLING_TOPUP_MAX_USD",
    "BILLING_LOW_BALANCE_USD",
):
    if globals()[_name] < 0:
        raise ImproperlyConfigured(f"{_name} cannot be negative (it is {globals()[_name]}).")
if BILLING_TOPUP_MIN_USD > BILLING_TOPUP_MAX_USD:
    raise ImproperlyConfigured("BILLING_TOPUP_MIN_USD cannot be above BILLING_TOPUP_MAX_USD.")


# --- Budget alerts (usage/alerts.py) ------------------------------------------
def _thresholds(raw: str) -> list[Decimal]:
    try:
        return percentages(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"USAGE_ALERT_THRESHOLDS: {exc} Not {raw!r}.") from exc


USAGE_ALERT_THRESHOLDS = _thresholds(env.str("USAGE_ALERT_THRESHOLDS", default="50,80"))
try:
    USAGE_STAFF_ALERT_USD = (
        Decimal(env.str("USAGE_STAFF_ALERT_USD", default="")) or None
        if env.str("USAGE_STAFF_ALERT_USD", default="")
        else None
    )
except InvalidOperation as exc:
    raise ImproperlyConfigured("USAGE_STAFF_ALERT_USD must be an amount such as 20.00.") from exc
ALERT_WEBHOOK_URL = env.str("ALERT_WEBHOOK_URL", default="")
ALERT_WEBHOOK_SECRET = env.str("ALERT_WEBHOOK_SECRET", default="")
if ALERT_WEBHOOK_URL and not ALERT_WEBHOOK_SECRET:
    raise ImproperlyConfigured("ALERT_WEBHOOK_URL needs ALERT_WEBHOOK_SECRET to sign with.")
# The address of this site as users reach it, for links in mails.
SITE_URL = env.str("SITE_URL", default="http://localhost:8000").rstrip("/")

# Demo data (seed_demo) is only loaded by `make run`, which sets DEBUG on.
DEMO_PASSWORD = "demo-pass-2026"
