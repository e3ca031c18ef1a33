"""Is the database migrated? A clear sentence instead of "no such table" tracebacks."""

from __future__ import annotations

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from .config import ROOT
from .extensions import db


def schema_problem() -> str | None:
    """None when the database is at the latest migration, else what to do about it."""
    url = db.engine.url.render_as_string(hide_password=True)
    try:
        with db.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        return f"cannot reach the database {url}: {exc.__class__.__name__}: {reason}"
    heads = ScriptDirectory(str(ROOT / "migrations")).get_heads()
    if current is None:
        return (f"the database {url} has no tables yet: run `flask --app wsgi db upgrade` "
                "(`make run` does it for you)")
    if current not in heads:
        return (f"the database {url} is at migration {current}, the code expects "
                f"{', '.join(heads)}: run `flask --app wsgi db upgrade`")
    current_app.logger.debug("database schema is current (%s)", current)
    return None
