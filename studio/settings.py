"""Settings, all from environment variables (see README for the list).

With nothing set, the studio runs on one machine: SQLite and media under
DATA_DIR (./data). A team sets DATABASE_URL, REDIS_URL, SECRET_KEY and
MEDIA_ROOT. Without REDIS_URL (unit tests only; the run command always
sets one) the broker and the channel layer live in memory.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import ConnectionError as RedisConnectionError

from studio.env import env_bool, env_group_teams, env_int, env_list, env_str
from studio.log_filters import IMPORT_NOISE

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("DATA_DIR") or BASE_DIR / "data").resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once per DATA_DIR."""
    key = env_str("SECRET_KEY")
    if key:
        return key
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "studio.accounts",
    "studio.catalog",
    "studio.datasets",
    "studio.jobs",
    "studio.artifacts",
    "studio.live",
    "studio.api",
    "studio.notifications",
    "studio.audit",
    "studio.workers",
    "studio.storage",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "studio.accounts.middleware.SecondFactorEnrolmentMiddleware",
    "studio.security.ContentSecurityPolicyMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: it turns a lockout into its answer
]

ROOT_URLCONF = "studio.urls"
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
                "studio.notifications.context.unread_notifications",
                "studio.accounts.context.teams",
            ],
        },
    },
]
WSGI_APPLICATION = None
ASGI_APPLICATION = "studio.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'studio.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The web server and the worker write at once: WAL lets readers go on
    # while one writer holds the lock; IMMEDIATE avoids deadlocked upgrades.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# argon2 for new passwords; older hashes still verify and are upgraded at the next login.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
# Logins and API tokens: django-axes locks a user name from an address after
# LOGIN_FAILURE_LIMIT failures for LOGIN_LOCKOUT_MINUTES (studio.api.auth
# counts bad API tokens the same way).
# (AUTHENTICATION_BACKENDS: below, with the identity provider's settings.)
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_TEMPLATE = "accounts/locked.html"
AXES_VERBOSE = False

# Behind HTTPS (HTTPS=true, usually with a proxy that sets X-Forwarded-Proto):
# secure cookies, HSTS and redirects to https. Cookies are HttpOnly either way
# (the pages send the CSRF token from the page, not from the cookie).
HTTPS = env_bool("HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
SESSION_COOKIE_HTTPONLY = CSRF_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = 365 * 24 * 3600 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# HSTS preloading is a promise to browser vendors an operator makes on purpose (hstspreload.org), not a default.
SILENCED_SYSTEM_CHECKS = ["security.W021"]
# Two-factor sign-in (TOTP with recovery codes, django-otp; studio.accounts.two_factor): anyone with a
# local password may turn it on; with REQUIRE_2FA_FOR_ADMINS, site staff and team admins must set it up
# before anything else. API tokens keep working either way (they are the scripts' path).
REQUIRE_2FA_FOR_ADMINS = env_bool("REQUIRE_2FA_FOR_ADMINS", False)
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "Tuning Studio")
# Sign-in with the organisation's identity provider over OpenID Connect (mozilla-django-oidc;
# studio.accounts.oidc): on when OIDC_ISSUER is set. The endpoints come from the issuer's discovery
# document unless given. OIDC_GROUP_TEAMS (JSON) puts a person into teams on their first sign-in by
# the groups claim: {"ml-team": ["ml", "member"]}; OIDC_ALLOWED_GROUPS, when set, refuses anyone in
# none of them. LOCAL_PASSWORDS=false turns passwords off: the identity provider is the only way in.
OIDC_ISSUER = env_str("OIDC_ISSUER").rstrip("/")
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "your organisation's account")
OIDC_RP_CLIENT_ID = env_str("OIDC_CLIENT_ID")
OIDC_RP_CLIENT_SECRET = env_str("OIDC_CLIENT_SECRET")
OIDC_RP_SIGN_ALGO = env_str("OIDC_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = env_str("OIDC_SCOPES", "openid email profile")
OIDC_OP_AUTHORIZATION_ENDPOINT = env_str("OIDC_AUTHORIZATION_ENDPOINT")
OIDC_OP_TOKEN_ENDPOINT = env_str("OIDC_TOKEN_ENDPOINT")
OIDC_OP_USER_ENDPOINT = env_str("OIDC_USERINFO_ENDPOINT")
OIDC_OP_JWKS_ENDPOINT = env_str("OIDC_JWKS_ENDPOINT")
OIDC_USE_PKCE = True
OIDC_TIMEOUT = 10
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups")
OIDC_GROUP_TEAMS = env_group_teams("OIDC_GROUP_TEAMS")
OIDC_ALLOWED_GROUPS = env_list("OIDC_ALLOWED_GROUPS", [])
LOCAL_PASSWORDS = env_bool("LOCAL_PASSWORDS", True)
if OIDC_ISSUER and not (OIDC_RP_CLIENT_ID and OIDC_RP_CLIENT_SECRET):
    raise ImproperlyConfigured("OIDC_ISSUER is set: set OIDC_CLIENT_ID and OIDC_CLIENT_SECRET too")
if not LOCAL_PASSWORDS and not OIDC_ISSUER:
    raise ImproperlyConfigured("LOCAL_PASSWORDS=false needs OIDC_ISSUER: nobody could sign in")
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend"] + (
    ["django.contrib.auth.backends.ModelBackend"] if LOCAL_PASSWORDS else []) + (
    ["studio.accounts.oidc.IdentityProviderBackend"] if OIDC_ISSUER else [])
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT") or DATA_DIR / "media").resolve()

# Uploads: files over UPLOAD_MAX_BYTES are refused while they stream in.
UPLOAD_MAX_BYTES = env_int("UPLOAD_MAX_BYTES", 1 << 30, minimum=1)
FILE_UPLOAD_HANDLERS = [
    "studio.datasets.uploads.SizeLimitUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
FILE_UPLOAD_TEMP_DIR = None

# Model code shipped with a model runs only if an admin turns this on.
TRUST_REMOTE_CODE = env_bool("TRUST_REMOTE_CODE", False)
# Models from a hub: huggingface_hub's own variables (HF_ENDPOINT for a mirror
# or a self-hosted hub, HF_HUB_OFFLINE, HTTPS_PROXY) apply to the download
# jobs; the files go under MEDIA_ROOT/models. Folders on the server can be
# added only under MODEL_FOLDER_ROOTS (comma-separated absolute paths).
HF_ENDPOINT = env_str("HF_ENDPOINT") or None
MODEL_FOLDER_ROOTS = env_list("MODEL_FOLDER_ROOTS", [])
# The key team secrets (hub tokens) are encrypted with; SECRET_KEY when unset.
SECRETS_KEY = env_str("SECRETS_KEY")

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured(f"REDIS_URL={REDIS_URL!r} must start with redis://, rediss:// or unix://")
# The channel layer that broadcasts to sockets (job events, access changes), apart from "default", which
# carries point-to-point streams (a playground worker's tokens to the request waiting for them).
BROADCAST_CHANNEL_LAYER = "broadcast"
# How the broadcast layer reaches viewers: "pubsub" (Redis pub/sub: one message per event and web process,
# handed to that process's viewers in memory) or "queued" (channels_redis' RedisChannelLayer: a copy queued in
# Redis per viewer, each popped by its process; bench/ws_fanout.py --layers pubsub,queued compares them).
# Pub/sub drops what nobody listens to, which costs nothing here: the database holds every event and a
# socket that sees a gap in the seqs reads it from there.
BROADCAST_LAYER = env_str("BROADCAST_LAYER", "pubsub")
if BROADCAST_LAYER not in ("pubsub", "queued"):
    raise ImproperlyConfigured(f"BROADCAST_LAYER={BROADCAST_LAYER!r} must be pubsub or queued")
if REDIS_URL:
    # socket_timeout: redis-py's default (5 s) makes an idle channel layer
    # fail and close WebSockets with 1011 (see FIELD-NOTES).
    # socket_connect_timeout: a worker whose Redis is down loses only the
    # live push (2 s at most a try), never the training.
    # retry_on_error: a command on a pooled connection that Redis closed (it restarted) goes once more on a new
    # connection (redis-py's own retry), for every long-lived connection: a web process's first socket or /v1/
    # reply after a restart, a worker's send loop, a pub/sub subscription.
    REDIS_HOSTS = [{"address": REDIS_URL, "socket_timeout": 30, "socket_connect_timeout": 2,
                    "retry_on_error": [RedisConnectionError]}]
    # capacity: a stream whose reader stopped pushes back on its sender rather than filling Redis
    QUEUED_LAYER = {"BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {"hosts": REDIS_HOSTS, "capacity": 1000}}
    CHANNEL_LAYERS = {
        "default": QUEUED_LAYER,
        BROADCAST_CHANNEL_LAYER: QUEUED_LAYER if BROADCAST_LAYER == "queued" else {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": REDIS_HOSTS}},
    }
else:
    CHANNEL_LAYERS = {alias: {"BACKEND": "channels.layers.InMemoryChannelLayer"}
                      for alias in ("default", BROADCAST_CHANNEL_LAYER)}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
# A training job runs for hours: Redis must not hand it to a second worker
# meanwhile. The job row's status guards against double runs as well.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT_S", 7 * 24 * 3600)}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Which device pool (Celery queue) jobs go to unless they name one.
DEFAULT_DEVICE_POOL = env_str("DEFAULT_DEVICE_POOL", "default")
# Dataset analyses and diet steps go to this pool, which training never
# occupies: short work a user waits for on the dataset page, not held up
# behind a job that trains for hours. The run command starts a small worker
# for it; a team deployment runs one beside the GPU workers (docker-compose.yml).
DATASET_POOL = env_str("DATASET_POOL", "dataset")
# What a worker reports it can train on (worker/devices.py): 0 reads it from torch (the visible CUDA GPUs,
# else one CPU device). WORKER_DEVICES=4 lets a CPU worker run 4-process jobs (gloo), or names how many GPUs
# of the machine the worker may use; WORKER_DEVICE_MEMORY_MIB overrides the memory of each.
WORKER_DEVICES = env_int("WORKER_DEVICES", 0)
WORKER_DEVICE_MEMORY_MIB = env_int("WORKER_DEVICE_MEMORY_MIB", 0)
# The address the pool's other workers reach this worker's machine at, for a job that runs on several workers
# (torchrun's c10d rendezvous); empty: the host name. The job's head hosts its rendezvous on the first free
# port of RENDEZVOUS_PORT … + RENDEZVOUS_PORTS (open them between a pool's machines); the others wait at most
# RENDEZVOUS_TIMEOUT_S seconds for every worker to join.
WORKER_ADDRESS = env_str("WORKER_ADDRESS", "")
RENDEZVOUS_PORT = env_int("RENDEZVOUS_PORT", 29400, minimum=1)
RENDEZVOUS_PORTS = env_int("RENDEZVOUS_PORTS", 100, minimum=1)
RENDEZVOUS_TIMEOUT_S = env_int("RENDEZVOUS_TIMEOUT_S", 300, minimum=10)
# Pools whose workers have a CUDA GPU; GPU-only methods (QLoRA …) are
# offered only when there is one.
GPU_POOLS = env_list("GPU_POOLS", [])
# Webhooks go to public addresses only; these hosts, addresses or networks
# (e.g. "hooks.intranet,10.1.0.0/16") are allowed besides (studio.notifications.outbound).
WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS", [])
# A judged comparison's judge endpoint goes to a public address only, like a webhook; these hosts, addresses
# or networks are allowed besides (an intranet model server).
JUDGE_ALLOWED_HOSTS = env_list("JUDGE_ALLOWED_HOSTS", [])

# Job notices go to the owner in the app, and by e-mail when EMAIL_HOST is
# set (and EMAIL_NOTIFICATIONS is not 0). STUDIO_BASE_URL makes the link in
# the mail absolute (e.g. https://studio.example.com).
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_str("EMAIL_USE_TLS", "0") == "1"
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "tuning-studio@localhost")
EMAIL_NOTIFICATIONS = bool(EMAIL_HOST) and env_str("EMAIL_NOTIFICATIONS", "1") != "0"
STUDIO_BASE_URL = env_str("STUDIO_BASE_URL", "")

# The playground's generation requests go to this queue: a worker of their
# own (started by the launcher) keeps a model loaded between requests and
# unloads it after PLAYGROUND_IDLE_UNLOAD_S seconds without one.
PLAYGROUND_QUEUE = env_str("PLAYGROUND_QUEUE", "interactive")
PLAYGROUND_IDLE_UNLOAD_S = env_int("PLAYGROUND_IDLE_UNLOAD_S", 300, minimum=1)

# A running job's worker renews its heartbeat every JOB_HEARTBEAT_S seconds;
# after JOB_LOST_AFTER_S without one the job resumes from its last
# checkpoint on the next free worker, at most JOB_MAX_ATTEMPTS starts in all.
JOB_HEARTBEAT_S = env_int("JOB_HEARTBEAT_S", 30, minimum=1)
JOB_LOST_AFTER_S = env_int("JOB_LOST_AFTER_S", 180, minimum=2)
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3, minimum=1)
# Workers stopped, or lost, longer ago than this leave the workers page (studio.workers.services).
WORKER_HISTORY_HOURS = env_int("WORKER_HISTORY_HOURS", 24, minimum=1)
# Stored events a WebSocket sends per message when a client catches up (studio.live.consumers).
EVENT_REPLAY_BATCH = env_int("EVENT_REPLAY_BATCH", 500, minimum=1)
# Among queued jobs of equal priority, the team and person that used the pool least recently go first
# (studio/jobs/fair_share.py); usage halves every FAIR_SHARE_HALF_LIFE_HOURS after a job ends. Off: first come.
FAIR_SHARE = env_bool("FAIR_SHARE", True)
FAIR_SHARE_HALF_LIFE_HOURS = env_int("FAIR_SHARE_HALF_LIFE_HOURS", 72, minimum=1)
# Deleted datasets, jobs, artifacts and models can be restored for this long;
# then a worker's purge removes their files and rows (0: at its next round).
DELETED_RETENTION_HOURS = env_int("DELETED_RETENTION_HOURS", 7 * 24, minimum=0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "filters": {"import_noise": {"()": "studio.log_filters.ImportNoise"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"uvicorn.error": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"},
                # Celery's connection, mingle and task-received lines; the launcher asks for WARNING
                "celery": {"level": env_str("CELERY_LOG_LEVEL", env_str("LOG_LEVEL", "INFO"))},
                **{name: {"filters": ["import_noise"]} for name in IMPORT_NOISE}},
}

SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
