"""Minicourse: a self-hosted email mini-course.

``create_app`` is the only way an app comes to be; importing this package builds nothing.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import event

from . import config as config_module
from .config import ROOT, ConfigError
from .lessons import CourseError

__all__ = ["create_app", "ConfigError", "CourseError"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment (and ``.env``), then ``config``."""
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
        instance_path=os.environ.get("MINICOURSE_INSTANCE") or str(ROOT / "instance"),
    )
    overrides = dict(config or {})
    if not overrides.get("TESTING"):
        from dotenv import load_dotenv

        load_dotenv(ROOT / ".env", override=False)
    env = dict(os.environ)
    env.update({k: str(v) for k, v in overrides.pop("ENV", {}).items()})
    app.config.update(config_module.load(env, Path(app.instance_path)))
    app.config.update(overrides)

    from . import content, security
    from .ids import IdConverter

    if app.config["MINICOURSE_ENV"] == "production":
        # Inside ProxyFix, so it judges the host and scheme the proxy reports.
        app.wsgi_app = security.BaseUrlOnly(  # type: ignore[method-assign]
            app.wsgi_app, app.config["BASE_URL"])
    if app.config["PROXY_COUNT"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = app.config["PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    _configure_logging(app)
    _init_extensions(app)
    content.init_app(app)
    security.init_app(app)
    # Every <int:...> in a URL is bounded to what an id column holds (before any route is
    # added): a larger number is a 404, never a database error.
    app.url_map.converters["int"] = IdConverter
    _register_blueprints(app)
    from .cli import register_cli

    register_cli(app)
    return app


def _configure_logging(app: Flask) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _init_extensions(app: Flask) -> None:
    from . import models  # noqa: F401  (registers the tables on the metadata)
    from .extensions import csrf, db, limiter, login_manager, migrate

    db.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    csrf.init_app(app)
    limiter.init_app(app)
    # The admin layout gets current_user itself; public pages never touch the login session.
    login_manager.init_app(app, add_context_processor=False)
    login_manager.login_view = "admin.login"
    # Off: Flask-Login's "strong" mode ties a session to a hash of IP and User-Agent, but
    # does nothing to a permanent session (ours are) beyond marking it not fresh, so a
    # copied cookie kept working. Made strict it would still only stop a thief who cannot
    # copy a User-Agent, and it would sign out an admin whose phone changes networks. What
    # ends sessions is the per-admin session version checked on every request
    # (course/admin/auth.py): logout, a new password and disabling each bump it.
    login_manager.session_protection = None
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas)


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    """WAL and foreign keys for SQLite, so the web and the worker can share the file."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


def _register_blueprints(app: Flask) -> None:
    from .admin import bp as admin_bp
    from .public import bp as public_bp
    from .tracking import bp as tracking_bp
    from .webhooks_in import bp as webhooks_bp

    app.register_blueprint(public_bp)
    app.register_blueprint(tracking_bp)
    app.register_blueprint(admin_bp, url_prefix="/admin")
    app.register_blueprint(webhooks_bp, url_prefix="/webhooks")
    # Browsers ask every site for /favicon.ico, whatever its pages link to (they link to
    # the SVG one); both are in static/.
    app.add_url_rule("/favicon.ico", "favicon",
                     lambda: app.send_static_file("favicon.ico"))
