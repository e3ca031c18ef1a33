"""Flask extensions, created unbound here and bound to an app in ``create_app``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import Integer, MetaData, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)

if TYPE_CHECKING:
    Model = Base  # what db.Model is, spelled so type checkers can follow it
else:
    Model = db.Model


def id_in(column: Any, ids: Any) -> Any:
    """``column IN ids``; on PostgreSQL as ``= ANY(array)``: one bound parameter instead of
    a thousand, which saves compiling and sending them on every batch of the send path."""
    ids = list(ids)
    if db.engine.dialect.name == "postgresql":
        return column == any_(bindparam("ids", ids, type_=ARRAY(Integer), unique=True))
    return column.in_(ids)


def affected_rows(result: Any) -> int:
    """Rows an UPDATE or DELETE touched (``execute`` is typed as returning plain Result)."""
    return int(getattr(result, "rowcount", 0) or 0)
migrate = Migrate()
csrf = CSRFProtect()
login_manager = LoginManager()
# Limits are counted in Redis, and when Redis does not answer they are counted in this
# process's memory instead (checking for Redis again now and then): an outage must not turn
# signups and admin logins into 500s. Any other storage error lets the request through.
# Short timeouts, so a Redis that does not answer at all costs a request a second at most.
limiter = Limiter(
    key_func=get_remote_address,
    default_limits=[],
    in_memory_fallback_enabled=True,
    swallow_errors=True,
    storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
)
