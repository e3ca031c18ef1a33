"""Shared fixtures: a real database (SQLite and PostgreSQL), real Redis, the real app.

Every test that uses ``app`` runs twice, once per database. Services are real and
required: if PostgreSQL or Redis is not reachable the tests fail, they never skip.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from course import create_app
from course.extensions import db
from course.mail.memory import MemoryBackend

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
PG_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SECRET = "test-secret-key-that-is-long-enough-for-production-checks"
BACKENDS = ["sqlite", "postgresql"]


def base_config(database_url: str, tmp: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "TESTING": True,
        "SECRET_KEY": SECRET,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": REDIS_URL,
        "RATELIMIT_STORAGE_URI": REDIS_URL,
        "RATELIMIT_ENABLED": False,
        "BASE_URL": "http://localhost",
        "MAIL_BACKEND": "memory",
        "MAIL_FROM": "course@minicourse.test",
        "OUTBOX_DIR": str(tmp / "outbox"),
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="session")
def redis_conn() -> Iterator[Redis]:
    conn = Redis.from_url(REDIS_URL)
    conn.ping()  # a missing Redis is a failure, not a skip
    yield conn
    conn.flushdb()


@pytest.fixture(scope="session")
def database_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One migrated database per backend for the whole session."""
    from flask_migrate import upgrade

    sqlite_path = tmp_path_factory.mktemp("db") / "test.db"
    name = f"mc_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    pg_url = re.sub(r"/[^/]+$", f"/{name}", PG_ADMIN_URL)
    urls = {"sqlite": f"sqlite:///{sqlite_path}", "postgresql": pg_url}
    tmp = tmp_path_factory.mktemp("migrate")
    for url in urls.values():
        app = create_app(base_config(url, tmp))
        with app.app_context():
            upgrade()
            db.engine.dispose()
    yield urls
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def wipe(app: Flask) -> None:
    with app.app_context():
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()


@pytest.fixture(params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_app(database_urls: dict[str, str], db_backend: str, redis_conn: Redis,
             tmp_path: Path) -> Iterator[Any]:
    """Build apps on the test database with config overrides; cleans up after the test."""
    apps: list[Flask] = []
    redis_conn.flushdb()
    MemoryBackend.outbox.clear()

    def factory(**overrides: Any) -> Flask:
        app = create_app(base_config(database_urls[db_backend], tmp_path, **overrides))
        if not apps:
            wipe(app)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
    MemoryBackend.outbox.clear()


@pytest.fixture
def app(make_app: Any) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def outbox() -> list[Any]:
    """Messages sent through the memory backend, in order."""
    return MemoryBackend.outbox


CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_from(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "page has no CSRF token"
    return m.group(1)


def run_jobs(app: Flask, burst: bool = True) -> None:
    """Run every queued job through a real RQ worker (in this process, on real Redis)."""
    from course.queue import QUEUES
    from workers.worker import SimpleFlaskWorker

    with app.app_context():
        from course.queue import redis_connection

        conn = redis_connection()
    worker = SimpleFlaskWorker(list(QUEUES), connection=conn, app=app)
    worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")


# The admin: one account and a client signed in with it.

EMAIL = "owner@example.com"
PASSWORD = "correct horse battery staple"


def add_admin(app: Flask, email: str = EMAIL, password: str = PASSWORD) -> None:
    from course.admin_accounts import create_admin

    with app.app_context():
        create_admin(email, password)


def post_login(client: FlaskClient, email: str, password: str,
               next_url: str | None = None) -> Any:
    url = "/admin/login" + (f"?next={next_url}" if next_url else "")
    token = csrf_from(client.get(url).get_data(as_text=True))
    return client.post(url, data={"email": email, "password": password, "csrf_token": token})


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    """A client signed in as an admin (``EMAIL`` / ``PASSWORD``)."""
    add_admin(app)
    client = app.test_client()
    assert post_login(client, EMAIL, PASSWORD).status_code == 302
    return client
