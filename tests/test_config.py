"""Configuration: working defaults for a newcomer, one clear line for production mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from course import ConfigError, create_app
from course.config import load

ROOT = Path(__file__).resolve().parent.parent
GOOD_PRODUCTION = {
    "MINICOURSE_ENV": "production",
    "SECRET_KEY": "Ws2DKDTd-IBfAEYFQwuirRV2NKfZARMb3_t4xuGqguz7KSUp",
    "BASE_URL": "https://course.example.com",
    "MAIL_BACKEND": "sendgrid",
    "SENDGRID_API_KEY": "SG.test",
    "MAIL_FROM": "lessons@course.example.com",
    "DATABASE_URL": "postgres://u@db/minicourse",
    "REDIS_URL": "redis://cache:6379/0",
    "SENDGRID_WEBHOOK_PUBLIC_KEY": (
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZNI96V31VtUZIFz5vk7UD2j1J3ROCem277M6J6wC7agiSC3H"
        "tRS6O25/H3//WFnZ1Z594MvuHyycOp1g7SGgrA=="
    ),
}


def test_newcomer_defaults_need_no_settings(tmp_path: Path):
    cfg = load({}, tmp_path)
    assert cfg["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'minicourse.db'}"
    assert cfg["MAIL_BACKEND"] == "outbox"
    assert cfg["OUTBOX_DIR"] == str(tmp_path / "outbox")
    assert cfg["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    # A random development key, kept so sessions survive a restart, readable only by us.
    assert len(cfg["SECRET_KEY"]) >= 32
    assert load({}, tmp_path)["SECRET_KEY"] == cfg["SECRET_KEY"]
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_good_production_settings_load(tmp_path: Path):
    cfg = load(GOOD_PRODUCTION, tmp_path)
    assert cfg["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@db/minicourse"
    assert cfg["SESSION_COOKIE_SECURE"] is True
    assert cfg["RATELIMIT_STORAGE_URI"] == "redis://cache:6379/0"
    assert not (tmp_path / "secret_key").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY is not set"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY is not set (or shorter than 32 characters)"),
        ({"SECRET_KEY": " " * 48}, "SECRET_KEY is not set (or shorter than 32 characters)"),
        ({"SECRET_KEY": "x" * 48}, "SECRET_KEY is too predictable"),
        ({"SECRET_KEY": "abcd" * 8}, "SECRET_KEY is too predictable"),
        ({"MAIL_BACKEND": ""}, "MAIL_BACKEND is not set: set it to sendgrid or smtp"),
        ({"MAIL_BACKEND": "smtp", "SMTP_HOST": "mail.example.com", "SMTP_USERNAME": "u",
          "SMTP_PASSWORD": "p", "SMTP_STARTTLS": "false"},
         "SMTP_STARTTLS=false would send SMTP_USERNAME and SMTP_PASSWORD in clear text"),
        ({"WEBHOOK_SECRET": "s"}, "WEBHOOK_SECRET is not set (or shorter than 32"),
        ({"WEBHOOK_SECRET": "s" * 20, "WEBHOOK_URLS": "https://crm.example.com/hook"},
         "WEBHOOK_SECRET is not set (or shorter than 32"),
        ({"WEBHOOK_SECRET": "s" * 64}, "WEBHOOK_SECRET is too predictable"),
        ({"BASE_URL": "http://course.example.com"}, "BASE_URL must be the public https://"),
        ({"SENDGRID_API_KEY": ""}, "MAIL_BACKEND=sendgrid but SENDGRID_API_KEY is not set"),
        ({"MAIL_BACKEND": "smtp"}, "MAIL_BACKEND=smtp but SMTP_HOST is not set"),
        ({"MAIL_BACKEND": "carrier-pigeon"}, "MAIL_BACKEND='carrier-pigeon': use one of"),
        ({"MAIL_FROM": ""}, "MAIL_FROM is not set"),
        ({"SMTP_PORT": "twenty-five"}, "SMTP_PORT='twenty-five' is not a whole number"),
        ({"MINICOURSE_ENV": "staging"}, "MINICOURSE_ENV='staging'"),
    ],
)
def test_production_mistakes_are_refused_with_one_line(tmp_path: Path, change, message):
    with pytest.raises(ConfigError) as info:
        load({**GOOD_PRODUCTION, **change}, tmp_path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("change", [
    {"MAIL_BACKEND": "smtp", "SMTP_HOST": "mail.example.com", "SMTP_STARTTLS": "false"},
    {"MAIL_BACKEND": "smtp", "SMTP_HOST": "mail.example.com", "SMTP_USERNAME": "u",
     "SMTP_PASSWORD": "p"},
    {"MAIL_BACKEND": "outbox"},
    {"SECRET_KEY": "0123456789abcdef" * 2},  # 32 hex digits: 128 random bits is enough
    {"WEBHOOK_SECRET": "whsec-0123456789abcdefghijklmnopqrstuvwxyz",
     "WEBHOOK_URLS": "https://crm.example.com/hook"},
])
def test_production_accepts_the_safe_variants(tmp_path: Path, change):
    """No credentials in clear text without STARTTLS is fine, an outbox chosen on purpose
    is the owner's call, and a hex key or a real secret passes the predictability check."""
    assert load({**GOOD_PRODUCTION, **change}, tmp_path)["MINICOURSE_ENV"] == "production"


def test_create_app_reads_overrides_after_the_environment(tmp_path: Path):
    app = create_app({"TESTING": True, "ENV": {"MAIL_BACKEND": "memory"},
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'x.db'}",
                      "SECRET_KEY": "k" * 40})
    assert app.config["MAIL_BACKEND"] == "memory"
    assert app.config["SECRET_KEY"] == "k" * 40


def test_wsgi_refuses_to_start_in_production_without_a_secret(tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "MINICOURSE_ENV": "production",
           "MINICOURSE_INSTANCE": str(tmp_path), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("minicourse: SECRET_KEY is not set")
    assert "Traceback" not in result.stderr
