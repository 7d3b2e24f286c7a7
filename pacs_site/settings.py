"""Deployment settings, read from the environment (12-factor).

Runtime settings that an administrator changes while the server runs (AE
title, ports, time-outs, ...) are singleton models edited in the admin, not
here.  See README.md, "Configuration".
"""

import importlib.util
import secrets
import socket
from pathlib import Path

import dj_database_url

from pacs_site.datafiles import DEFAULT_UMASK, make_private
from pacs_site.env import envbool, envchoice, envint, envlist, envoctal, envstr

BASE_DIR = Path(__file__).resolve().parent.parent

# Storage root: index database (SQLite default), DICOM files, logs.
PACS_DATA_DIR = Path(envstr("PACS_DATA_DIR", str(BASE_DIR / "data"))).resolve()
PACS_STORAGE_DIR = PACS_DATA_DIR / "storage"
PACS_QUARANTINE_DIR = PACS_DATA_DIR / "quarantine"
PACS_LOG_DIR = PACS_DATA_DIR / "logs"
PACS_CACHE_DIR = PACS_DATA_DIR / "cache"  # previews (portal/previews.py)
# What this process creates is its owner's alone (files 0600, folders 0700);
# the publishing folders a disc robot reads are the one exception
# (pacs_site/datafiles.py).  027 lets a group read as well (a backup agent).
PACS_UMASK = envoctal("PACS_UMASK", DEFAULT_UMASK)
make_private(
    PACS_DATA_DIR,
    umask=PACS_UMASK,
    folders=[PACS_STORAGE_DIR, PACS_QUARANTINE_DIR, PACS_LOG_DIR, PACS_CACHE_DIR],
    files=[PACS_DATA_DIR / "pacs.sqlite3"],
)


def _local_secret_key():
    """A random key kept in the data folder, so a checkout just runs and a
    restart does not log everybody out.  Production sets SECRET_KEY."""
    path = PACS_DATA_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(50)
        path.touch(mode=0o600)
        path.write_text(key)
        return key


SECRET_KEY = envstr("SECRET_KEY") or _local_secret_key()
DEBUG = envbool("DEBUG", False)


def _local_hosts():
    hosts = {"localhost", "127.0.0.1", "[::1]", socket.gethostname(), socket.getfqdn()}
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for addr in addrs:
                if addr.family == socket.AF_INET:
                    hosts.add(addr.address)
                elif addr.family == socket.AF_INET6:
                    hosts.add(f"[{addr.address.split('%')[0]}]")
    except Exception:  # pragma: no cover - psutil missing or no /proc
        pass
    return sorted(hosts)


# Default: this machine's names and addresses; production lists its names.
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", _local_hosts())
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
# Origins whose pages may call /dicomweb/ from the browser (CORS; e.g. an
# OHIF served elsewhere). Empty: same origin only.
PACS_DICOMWEB_CORS_ORIGINS = envlist("PACS_DICOMWEB_CORS_ORIGINS", [])
# STOW-RS bounds, in MiB (portal/dicomweb/upload.py): one part (4 GiB, the
# most a dataset's 32-bit lengths describe well) and one request's body (a
# larger study goes in several requests).
PACS_STOW_MAX_PART_MB = envint("PACS_STOW_MAX_PART_MB", 4096, minimum=1)
PACS_STOW_MAX_BODY_MB = envint("PACS_STOW_MAX_BODY_MB", 65536, minimum=1)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_filters",
    "channels",
    "django_q",
    "pacs_site",
    "dicomnodes",
    "worklist",
    "portal",
    "publishing",
]

MIDDLEWARE = [
    "portal.middleware.SecureOverHttpsMiddleware",  # outermost: sees every cookie set below it
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "pacs_site.urls"

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
                "portal.context_processors.http_settings",
            ],
        },
    },
]

WSGI_APPLICATION = "pacs_site.wsgi.application"
ASGI_APPLICATION = "pacs_site.asgi.application"

# --- Database -------------------------------------------------------------
# Default: one SQLite file in the data folder.  DATABASE_URL switches to
# PostgreSQL (postgres://user@host:5432/name).
_default_db = f"sqlite:///{PACS_DATA_DIR / 'pacs.sqlite3'}"
PACS_SQLITE_SYNCHRONOUS = envchoice("PACS_SQLITE_SYNCHRONOUS", "FULL", ("FULL", "NORMAL"))
# Connections are closed after each request by default: runscp's and the
# worker's association threads come and go, and a kept connection would
# outlive its thread.  The web process runs every request's database work in
# one thread (pacs_site/asgi.py), so portal/daphne_server.py keeps its
# connection for a minute (PACS_DB_CONN_MAX_AGE): a connection per request
# was about 1 ms of a 15 ms QIDO-RS answer (py-spy).
DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL") or _default_db,
        conn_max_age=envint("PACS_DB_CONN_MAX_AGE", 0, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets readers (C-FIND, the admin) run while the index writer
        # commits.  synchronous=FULL syncs the WAL at every commit, so that a
        # C-STORE answered Success survives a power cut as its fsynced file
        # does; NORMAL syncs only at checkpoints (durable across application
        # crashes, not power cuts).  Measured with bench/ingest.py: see
        # docs/storage.md.  NORMAL pairs with "fsync on store" off.
        "init_command": f"PRAGMA journal_mode=WAL; PRAGMA synchronous={PACS_SQLITE_SYNCHRONOUS}",
        # Wait up to 30 s for a lock instead of failing at once.
        "timeout": 30,
        # Take the write lock at BEGIN: avoids the deadlock of two readers
        # upgrading to writers at the same time.
        "transaction_mode": "IMMEDIATE",
    }
    # Tests start listeners in other processes: they need a file, not :memory:.
    DATABASES["default"]["TEST"] = {"NAME": str(PACS_DATA_DIR / envstr("PACS_TEST_DB_NAME", "test-pacs.sqlite3"))}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = PACS_DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve admin assets straight from the apps when collectstatic has not run.
WHITENOISE_USE_FINDERS = True

# --- REST API (portal/api) ----------------------------------------------------
# Staff only: session login (browsable API, the dashboard) or a DRF token
# (`Authorization: Token <key>`, made in the admin under "Tokens").  Token
# first: an anonymous request then gets 401 with `WWW-Authenticate: Token`.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["portal.api.permissions.IsStaff"],
    "DEFAULT_PAGINATION_CLASS": "portal.api.filters.Pagination",
    # Views name their FilterSet (portal/api/filters.py); one without lists unfiltered.
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "PACS server API",
    "DESCRIPTION": "The archive (studies, series, instances), peers, transfer jobs, worklist items, "
    "burn jobs and study tokens. Staff only.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["portal.api.permissions.IsStaff"],
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "TransferKindEnum": "dicomnodes.transfers.models.TransferKind",
        "TransferStateEnum": "dicomnodes.transfers.models.TransferState",
        "PublisherKindEnum": "publishing.models.PublisherKind",
        "BurnJobStateEnum": "publishing.models.JobState",
    },
}
# Swagger UI and Redoc from our own static files, not a CDN (the server may
# have no internet): drf-spectacular-sidecar, when installed.
if importlib.util.find_spec("drf_spectacular_sidecar"):
    INSTALLED_APPS.append("drf_spectacular_sidecar")
    SPECTACULAR_SETTINGS.update(SWAGGER_UI_DIST="SIDECAR", SWAGGER_UI_FAVICON_HREF="SIDECAR", REDOC_DIST="SIDECAR")

# --- Channels and django-q2 -------------------------------------------------
REDIS_URL = envstr("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

Q_CLUSTER = {
    "name": "pacs",
    "workers": envint("PACS_Q_WORKERS", 2, minimum=1),
    # A task may run a transfer runner that keeps draining the queue for a
    # long time (dicomnodes/transfers/jobs.py: the jobs themselves run in
    # processes it forks, so the number of workers does not limit them):
    # allow a day.
    "timeout": envint("PACS_Q_TIMEOUT", 86400, minimum=60),
    "retry": envint("PACS_Q_TIMEOUT", 86400, minimum=60) + 600,
    "catch_up": False,
    "orm": "default",
    # How often the ORM broker looks for a queued task when it found none:
    # the wait between "Send" and the job's start.  django-q2's 0.2 s was
    # 0.08-0.18 s of a 1.2 s send of 2000 small instances (bench/transfer.py,
    # TransferJob created_at -> started_at); each look is one SELECT.
    # Redis hands a task over at once.
    "poll": envint("PACS_Q_POLL_MS", 50, minimum=10, maximum=5000) / 1000,
}
if REDIS_URL:
    Q_CLUSTER.pop("orm")
    Q_CLUSTER["redis"] = REDIS_URL

# --- Portal (token links) -----------------------------------------------------
# Token lookups (link pages, downloads, failed previews) per client address and minute.
PACS_TOKEN_LOOKUPS_PER_MINUTE = envint("PACS_TOKEN_LOOKUPS_PER_MINUTE", 30, minimum=0)
# HSTS max-age of HTTPS answers (portal.middleware: whenever TLS is on; 0 = none).
PACS_HSTS_SECONDS = envint("PACS_HSTS_SECONDS", 31536000, minimum=0)

# --- Production (PACS_PRODUCTION=1; README "Production settings") -------------
# HTTPS only: TLS on in the HTTP settings, or a TLS reverse proxy in front
# (then PACS_PROXY_HEADERS=1 so daphne takes the scheme from X-Forwarded-Proto).
PACS_PRODUCTION = envbool("PACS_PRODUCTION", False)
if PACS_PRODUCTION:
    if DEBUG:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("PACS_PRODUCTION=1 needs DEBUG off")
    SECURE_SSL_REDIRECT = envbool("PACS_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = PACS_HSTS_SECONDS
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("PACS_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = envbool("PACS_HSTS_PRELOAD", True)

# --- Logging ------------------------------------------------------------------
LOG_LEVEL = envstr("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"},
    },
    # A patient link's token in a logged path becomes "…" (portal/logredact.py).
    "filters": {"link_tokens": {"()": "portal.logredact.HideLinkTokens"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["link_tokens"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # pynetdicom (its PDU codec and negotiation, which we use) is chatty at INFO.
        "pynetdicom": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # django-q2 logs two lines for every task, schedules included (several
        # a minute); our tasks log what they do themselves.
        "django-q": {"level": envstr("PACS_Q_LOG_LEVEL", "WARNING").upper()},
    },
}
