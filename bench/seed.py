"""A fresh PostgreSQL database for one benchmark run, migrated and filled in one statement.

Seeding goes through ``INSERT ... SELECT generate_series`` rather than ORM objects, so
100,000 subscribers take about a second and the benchmark measures sending, not setup.
"""

from __future__ import annotations

import re
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "America/Sao_Paulo",
         "Australia/Sydney")
FIRST = ("Ada", "Grace", "Alan", "Katherine", "Linus", "Margaret", "Dennis", "Radia",
         "Barbara", "Ken", "Frances", "Edsger", "Hedy", "Donald", "Sophie", "Tim")
LAST = ("Lovelace", "Hopper", "Turing", "Johnson", "Torvalds", "Hamilton", "Ritchie",
        "Perlman", "Liskov", "Thompson", "Allen", "Dijkstra", "Lamarr", "Knuth", "Wilson")


def create_database(admin_url: str = PG_ADMIN_URL) -> tuple[str, str]:
    """Create ``mc_bench_<random>``; returns its name and URL."""
    name = f"mc_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return name, re.sub(r"/[^/]+$", f"/{name}", admin_url)


def throwaway_database(stack: ExitStack, admin_url: str = PG_ADMIN_URL,
                       keep: bool = False) -> tuple[str, str]:
    """``create_database``, dropped when ``stack`` closes unless ``keep`` (then its URL
    is printed for inspection). Returns its name and URL."""
    from bench.procs import log

    name, url = create_database(admin_url)
    if keep:
        stack.callback(log, f"kept database {url}")
    else:
        stack.callback(drop_database, name, admin_url)
    return name, url


def drop_database(name: str, admin_url: str = PG_ADMIN_URL) -> None:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def migrate(app_config: dict[str, Any]) -> None:
    """Bring the schema up with the project's own migrations, as a deployment would."""
    from flask_migrate import upgrade

    from course import create_app
    from course.extensions import db

    app = create_app(app_config)
    with app.app_context():
        upgrade()
        db.engine.dispose()


def seed_subscribers(engine: sa.Engine, count: int, lessons: int,
                     now: datetime | None = None) -> None:
    """``count`` active, confirmed subscribers, all due now, spread over time zones and
    over the course's lessons (so batches cover every lesson, as after a launch)."""
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    joined = now - timedelta(days=30)
    first = "ARRAY[" + ",".join(f"'{n}'" for n in FIRST) + "]"
    last = "ARRAY[" + ",".join(f"'{n}'" for n in LAST) + "]"
    zones = "ARRAY[" + ",".join(f"'{z}'" for z in ZONES) + "]"
    sql = f"""
        INSERT INTO subscriber (email, name, timezone, status, consent_at, consent_ip,
            consent_user_agent, consent_version, confirmed_at, next_position, next_send_at,
            created_at, updated_at)
        SELECT 'reader' || g || '@bench.example.org',
               ({first})[1 + g % {len(FIRST)}] || ' ' || ({last})[1 + (g / 7) % {len(LAST)}],
               ({zones})[1 + g % {len(ZONES)}],
               'active', :joined, '192.0.2.' || (g % 250), 'bench', 'v1', :joined,
               1 + (g / 3) % :lessons,
               :now - make_interval(secs => (g % 3600)::double precision),
               :joined, :joined
        FROM generate_series(1, :count) AS g
    """
    with engine.begin() as conn:
        conn.execute(sa.text(sql), dict(joined=joined, now=now, count=count, lessons=lessons))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE subscriber"))
