"""Configuration from environment variables, with defaults that work for a newcomer.

Read once, inside ``create_app``; nothing here touches ``os.environ`` at import time.
Production (``MINICOURSE_ENV=production``) refuses to start on missing or unsafe
settings with one line that says what to set.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent

MAIL_BACKENDS = ("outbox", "sendgrid", "smtp", "memory")
SECRET_MIN_LENGTH = 32
# A guess at a secret's strength from its own characters (length x Shannon entropy of their
# frequencies). Random keys pass with room to spare: 64 characters of token_urlsafe score
# about 320, 32 of token_hex 90 to 120; "x" * 48 scores 0, "ab" * 24 48, "abcd" * 8 64.
SECRET_MIN_BITS = 80
NEW_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"


# RQ kills a work horse still running 60 s past its job's timeout, checking every 30 s.
RQ_KILL_GRACE = 90


class ConfigError(RuntimeError):
    """A setting is missing or wrong; the message is one line telling what to set."""


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever spelling the URL came in."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def limiter_storage_for(redis_url: str) -> str:
    """Flask-Limiter's storage URI for the same Redis the queue uses."""
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://") :]
    return redis_url


def _dev_secret_key(instance_path: Path) -> str:
    """A random key kept in the instance folder, so sessions survive restarts in development."""
    path = instance_path / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


def load(env: Mapping[str, str], instance_path: Path) -> dict[str, Any]:
    """Build the Flask config mapping from an environment mapping."""
    app_env = env.get("MINICOURSE_ENV", "development").strip().lower()
    if app_env not in {"development", "production"}:
        raise ConfigError(f"MINICOURSE_ENV={app_env!r}: use 'development' or 'production'")
    production = app_env == "production"

    cfg: dict[str, Any] = {
        "MINICOURSE_ENV": app_env,
        "SECRET_KEY": env.get("SECRET_KEY", ""),
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(
            env.get("DATABASE_URL") or f"sqlite:///{instance_path / 'minicourse.db'}"
        ),
        "REDIS_URL": env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        # By default the address ``flask dev`` serves on (PORT, as for ``make run``).
        "BASE_URL": (env.get("BASE_URL")
                     or f"http://127.0.0.1:{_int(env, 'PORT', 5000)}").rstrip("/"),
        "MAIL_BACKEND": (env.get("MAIL_BACKEND") or "outbox").strip().lower(),
        "MAIL_FROM": env.get("MAIL_FROM") or "course@example.com",
        "MAIL_REPLY_TO": env.get("MAIL_REPLY_TO") or "",
        "OUTBOX_DIR": env.get("OUTBOX_DIR") or str(instance_path / "outbox"),
        "SENDGRID_API_KEY": env.get("SENDGRID_API_KEY", ""),
        "SENDGRID_API_HOST": env.get("SENDGRID_API_HOST") or "https://api.sendgrid.com",
        "SENDGRID_SANDBOX": _bool(env.get("SENDGRID_SANDBOX")),
        "SENDGRID_TIMEOUT": _float(env, "SENDGRID_TIMEOUT", 10.0),
        "SENDGRID_MAX_RETRIES": _int(env, "SENDGRID_MAX_RETRIES", 4),
        # Messages per second across every worker on every host; 0 means no limit.
        "SEND_RATE": _float(env, "SEND_RATE", 0.0),
        "SMTP_HOST": env.get("SMTP_HOST", ""),
        "SMTP_PORT": _int(env, "SMTP_PORT", 587),
        "SMTP_USERNAME": env.get("SMTP_USERNAME", ""),
        "SMTP_PASSWORD": env.get("SMTP_PASSWORD", ""),
        "SMTP_STARTTLS": _bool(env.get("SMTP_STARTTLS"), default=True),
        "LESSONS_DIR": env.get("LESSONS_DIR") or str(ROOT / "lessons"),
        # The course this install runs, by slug; needed only when LESSONS_DIR holds several.
        "COURSE": (env.get("COURSE") or "").strip(),
        "EMAIL_CHECK_DELIVERABILITY": _bool(env.get("EMAIL_CHECK_DELIVERABILITY")),
        "CONFIRM_MAX_AGE": _int(env, "CONFIRM_MAX_AGE", 72 * 3600),
        "SIGNUP_RATE_LIMIT": env.get("SIGNUP_RATE_LIMIT") or "10 per hour",
        "LOGIN_RATE_LIMIT": env.get("LOGIN_RATE_LIMIT") or "10 per 15 minutes",
        "ADMIN_TEST_SEND_LIMIT": env.get("ADMIN_TEST_SEND_LIMIT") or "10 per hour",
        "RATELIMIT_STORAGE_URI": env.get("RATELIMIT_STORAGE_URI") or "",
        "RATELIMIT_ENABLED": _bool(env.get("RATELIMIT_ENABLED"), default=True),
        "RATELIMIT_HEADERS_ENABLED": True,
        "SEND_MAX_ATTEMPTS": _int(env, "SEND_MAX_ATTEMPTS", 5),
        "REQUEUE_AFTER_SECONDS": _int(env, "REQUEUE_AFTER_SECONDS", 300),
        # An outage (5xx, 429, no connection) stops every worker for this long, doubled
        # for each failure in a row up to the maximum; a Retry-After is honoured instead.
        "SEND_BACKOFF_SECONDS": _float(env, "SEND_BACKOFF_SECONDS", 5.0),
        "SEND_BACKOFF_MAX_SECONDS": _float(env, "SEND_BACKOFF_MAX_SECONDS", 300.0),
        # An unconfirmed lesson (the request was written, no answer came) is settled by
        # the provider's events; past this window without one it is queued again if
        # events came for later requests, else UNCONFIRMED_WITHOUT_EVENTS decides:
        # "hold" (for a person, on the Deliveries page) or "resend".
        "UNCONFIRMED_WINDOW_SECONDS": _int(env, "UNCONFIRMED_WINDOW_SECONDS", 1800),
        "UNCONFIRMED_WITHOUT_EVENTS": unconfirmed_policy(
            env.get("UNCONFIRMED_WITHOUT_EVENTS") or "hold"),
        # Longer than a send job may run (RQ's job timeout is 600 s): past it, a delivery
        # still "sending" was left by a worker that died: "unconfirmed" if its request
        # was written, queued again if not.
        "SENDING_STALE_SECONDS": _int(env, "SENDING_STALE_SECONDS", 900),
        # How long a send job may run before RQ stops it (its work horse is killed about
        # a minute later if it does not stop): SENDING_STALE_SECONDS must be longer.
        "SEND_JOB_TIMEOUT": _int(env, "SEND_JOB_TIMEOUT", 600),
        # A pixel hit this soon after sending is a proxy or scanner prefetching, not a reader.
        "MACHINE_OPEN_SECONDS": _float(env, "MACHINE_OPEN_SECONDS", 10.0),
        # Answer valid pixel and click GETs in front of Flask (course/tracking_fast.py).
        "TRACKING_FAST_PATH": _bool(env.get("TRACKING_FAST_PATH"), default=True),
        # How many reverse proxies (nginx, a load balancer) stand in front of the app and
        # set X-Forwarded-For/-Proto: client IPs for rate limits and consent come from them.
        "PROXY_COUNT": _int(env, "PROXY_COUNT", 0),
        "ADMIN_PAGE_SIZE": _int(env, "ADMIN_PAGE_SIZE", 50),
        # The Lessons page counts a subscriber as stalled after this many days with no open
        # by a person and nothing marked done (course/dropoff_stats.py).
        "ADMIN_STALLED_DAYS": _int(env, "ADMIN_STALLED_DAYS", 7),
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 64 * 1024),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "PERMANENT_SESSION_LIFETIME": _int(env, "ADMIN_SESSION_SECONDS", 8 * 3600),
        "WTF_CSRF_TIME_LIMIT": None,
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        # SendGrid's Signed Event Webhook: the verification key SendGrid shows (base64 DER).
        "SENDGRID_WEBHOOK_PUBLIC_KEY": (env.get("SENDGRID_WEBHOOK_PUBLIC_KEY") or "").strip(),
        "SENDGRID_WEBHOOK_ALLOW_UNSIGNED": _bool(env.get("SENDGRID_WEBHOOK_ALLOW_UNSIGNED")),
        "SENDGRID_WEBHOOK_MAX_AGE": _int(env, "SENDGRID_WEBHOOK_MAX_AGE", 600),
        # The webhook alone takes big bodies: SendGrid posts thousands of events at once.
        "SENDGRID_WEBHOOK_MAX_BYTES": _int(env, "SENDGRID_WEBHOOK_MAX_BYTES", 32 * 1024 * 1024),
        # Outgoing webhooks for integrators (course/webhooks_out.py).
        "WEBHOOK_URLS": webhook_urls(env.get("WEBHOOK_URLS") or "", https_only=production),
        "WEBHOOK_SECRET": env.get("WEBHOOK_SECRET", ""),
        "WEBHOOK_TIMEOUT": _float(env, "WEBHOOK_TIMEOUT", 10.0),
        "WEBHOOK_MAX_ATTEMPTS": _int(env, "WEBHOOK_MAX_ATTEMPTS", 8),
        # Retry n waits base * 4**n seconds: 10 s, 40 s, 160 s ... about 15 hours in all.
        "WEBHOOK_RETRY_BASE": _float(env, "WEBHOOK_RETRY_BASE", 10.0),
    }
    cfg["SESSION_COOKIE_SECURE"] = cfg["BASE_URL"].startswith("https://")
    cfg["REMEMBER_COOKIE_SECURE"] = cfg["SESSION_COOKIE_SECURE"]
    if not cfg["RATELIMIT_STORAGE_URI"]:
        cfg["RATELIMIT_STORAGE_URI"] = limiter_storage_for(cfg["REDIS_URL"])

    if cfg["MAIL_BACKEND"] not in MAIL_BACKENDS:
        raise ConfigError(
            f"MAIL_BACKEND={cfg['MAIL_BACKEND']!r}: use one of {', '.join(MAIL_BACKENDS)}"
        )
    if not 1 <= cfg["ADMIN_STALLED_DAYS"] <= 365:
        raise ConfigError(f"ADMIN_STALLED_DAYS={cfg['ADMIN_STALLED_DAYS']}: use a number "
                          "of days from 1 to 365")
    if cfg["WEBHOOK_URLS"] and not cfg["WEBHOOK_SECRET"]:
        raise ConfigError("WEBHOOK_URLS is set but WEBHOOK_SECRET is not: set it to a long "
                          "random string the receivers use to check signatures")
    if cfg["SENDGRID_WEBHOOK_PUBLIC_KEY"]:
        check_sendgrid_key(cfg["SENDGRID_WEBHOOK_PUBLIC_KEY"])
    if production:
        check_production(cfg, mail_backend_set=bool((env.get("MAIL_BACKEND") or "").strip()))
    elif not cfg["SECRET_KEY"]:
        cfg["SECRET_KEY"] = _dev_secret_key(instance_path)
    return cfg


def unconfirmed_policy(raw: str) -> str:
    """``UNCONFIRMED_WITHOUT_EVENTS``: what to do with an unconfirmed lesson no event
    settled within the window: ``hold`` it for a person, or ``resend`` it."""
    value = raw.strip().lower()
    if value not in ("hold", "resend"):
        raise ConfigError(f"UNCONFIRMED_WITHOUT_EVENTS={raw!r}: use hold or resend")
    return value


def webhook_urls(raw: str, *, https_only: bool) -> tuple[str, ...]:
    """``WEBHOOK_URLS``: comma-separated absolute URLs (https only in production)."""
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    for url in urls:
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"WEBHOOK_URLS: {url!r} is not an absolute http(s) URL")
        if https_only and parts.scheme != "https":
            raise ConfigError(f"WEBHOOK_URLS: {url!r} must use https:// in production")
    return urls


def check_sendgrid_key(key: str) -> None:
    """A key that cannot verify anything would refuse every event: say so at start-up."""
    from .sendgrid_events import load_public_key

    try:
        load_public_key(key)
    except ValueError as exc:
        raise ConfigError(f"SENDGRID_WEBHOOK_PUBLIC_KEY is not usable: {exc}") from None


def estimated_bits(secret: str) -> float:
    """A rough strength of ``secret`` from its characters alone: length times the Shannon
    entropy of their frequencies. It cannot prove a key random, only catch one that is
    plainly not (one character repeated, a short pattern, spaces)."""
    if not secret:
        return 0.0
    counts: dict[str, int] = {}
    for char in secret:
        counts[char] = counts.get(char, 0) + 1
    n = len(secret)
    return -n * sum(c / n * math.log2(c / n) for c in counts.values())


def check_secret(name: str, value: str) -> None:
    """Refuse a secret that is missing, short, or plainly not random, naming ``name``."""
    stripped = value.strip()
    if len(stripped) < SECRET_MIN_LENGTH:
        raise ConfigError(
            f"{name} is not set (or shorter than {SECRET_MIN_LENGTH} characters): "
            f"set it to the output of {NEW_SECRET}"
        )
    if estimated_bits(stripped) < SECRET_MIN_BITS:
        raise ConfigError(
            f"{name} is too predictable (the same few characters repeated): "
            f"set it to the output of {NEW_SECRET}"
        )


def check_production(cfg: Mapping[str, Any], *, mail_backend_set: bool = True) -> None:
    """Refuse settings that are fine on a laptop and wrong on the internet."""
    check_secret("SECRET_KEY", cfg["SECRET_KEY"])
    if not cfg["BASE_URL"].startswith("https://"):
        raise ConfigError(
            "BASE_URL must be the public https:// address of the site in production "
            "(List-Unsubscribe links must be HTTPS)"
        )
    if not mail_backend_set:
        raise ConfigError(
            "MAIL_BACKEND is not set: set it to sendgrid or smtp (the default, outbox, only "
            "writes .eml files and delivers nothing)"
        )
    if cfg["MAIL_BACKEND"] == "sendgrid" and not cfg["SENDGRID_API_KEY"]:
        raise ConfigError("MAIL_BACKEND=sendgrid but SENDGRID_API_KEY is not set")
    if cfg["SENDING_STALE_SECONDS"] <= cfg["SEND_JOB_TIMEOUT"] + RQ_KILL_GRACE:
        # (Tests shorten both and rely on RQ stopping the job at its timeout.)
        raise ConfigError(
            f"SENDING_STALE_SECONDS={cfg['SENDING_STALE_SECONDS']} must be longer than "
            f"SEND_JOB_TIMEOUT={cfg['SEND_JOB_TIMEOUT']} plus {RQ_KILL_GRACE} s: a send "
            "still running could otherwise be taken for a dead one and sent twice")
    if cfg["MAIL_BACKEND"] == "smtp" and not cfg["SMTP_HOST"]:
        raise ConfigError("MAIL_BACKEND=smtp but SMTP_HOST is not set")
    if (cfg["MAIL_BACKEND"] == "smtp" and not cfg["SMTP_STARTTLS"]
            and (cfg["SMTP_USERNAME"] or cfg["SMTP_PASSWORD"])):
        raise ConfigError(
            "SMTP_STARTTLS=false would send SMTP_USERNAME and SMTP_PASSWORD in clear text: "
            "set SMTP_STARTTLS=true"
        )
    if cfg["MAIL_BACKEND"] == "memory":
        raise ConfigError(
            "MAIL_BACKEND=memory keeps mail in memory and sends nothing: use sendgrid or smtp"
        )
    if cfg["MAIL_FROM"].endswith("@example.com"):
        raise ConfigError("MAIL_FROM is not set: set it to the address lessons are sent from")
    if cfg["WEBHOOK_SECRET"] or cfg["WEBHOOK_URLS"]:
        check_secret("WEBHOOK_SECRET", cfg["WEBHOOK_SECRET"])
    if (cfg["MAIL_BACKEND"] == "sendgrid" and not cfg["SENDGRID_WEBHOOK_PUBLIC_KEY"]
            and not cfg["SENDGRID_WEBHOOK_ALLOW_UNSIGNED"]):
        raise ConfigError(
            "SENDGRID_WEBHOOK_PUBLIC_KEY is not set: paste the Signed Event Webhook "
            "verification key from SendGrid (or set SENDGRID_WEBHOOK_ALLOW_UNSIGNED=1)"
        )
