"""Admin pages at scale: the subscribers list, its search and filters, a subscriber's page
and the dashboard, timed over HTTP against a million subscribers on PostgreSQL.

Creates a throw-away PostgreSQL database, migrates it with the project's migrations, seeds
N subscribers (default 1,000,000) with about five deliveries each and some events in a few
``INSERT ... SELECT generate_series`` statements, starts ``gunicorn wsgi:app`` (2 workers,
configured through the environment as in production), signs in as an admin through the
login form (session cookie and CSRF token), and times each page: p50, p95 and max over
--requests requests after a warm-up, with PASS or FAIL against 300 ms at p95.

    python -m bench.admin [--subscribers 1000000] [--requests 50] [--keep-db]
                          [--pg-admin-url URL]

Progress goes to stderr, the report to stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import requests
import sqlalchemy as sa

from bench import procs, seed
from bench.host import machine
from bench.procs import log

SECRET_KEY = "bench-secret-key-that-is-long-enough-for-production-checks"
ADMIN_EMAIL = "owner@bench.example.org"
ADMIN_PASSWORD = "bench admin password, long enough"
TARGET_MS = 300.0
WARMUP = 5

FIRST = ("Ada", "Grace", "Alan", "Katherine", "Linus", "Margaret", "Dennis", "Radia",
         "Barbara", "Ken", "Frances", "Edsger", "Hedy", "Donald", "Sophie", "Tim", "Amara",
         "Chidi", "Mei", "Hiroshi", "Priya", "Arjun", "Lucia", "Mateo", "Ingrid", "Sven",
         "Fatima", "Omar", "Zofia", "Tomasz", "Aroha", "Wiremu", "Nadia", "Ivan", "Chloé",
         "Joaquín", "Siobhan", "Declan", "Yara", "Kofi")
LAST = ("Lovelace", "Hopper", "Turing", "Johnson", "Torvalds", "Hamilton", "Ritchie",
        "Perlman", "Liskov", "Thompson", "Allen", "Dijkstra", "Lamarr", "Knuth", "Wilson",
        "Okafor", "Nakamura", "Sharma", "García", "Fernández", "Lindqvist", "Haddad",
        "Kowalski", "Ngata", "Petrov", "O'Brien", "Mensah", "Zhang", "Müller", "Rossi",
        "Dubois", "Silva", "Kim", "Nguyen", "Cohen", "Novak", "Jansen", "Murphy", "Costa",
        "Ahmed")
DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "post.example.com",
           "inbox.example.org")
# Weighted: most readers near the course owner's own audience.
ZONES = ("Europe/London", "Europe/London", "Europe/Paris", "Europe/Berlin",
         "America/New_York", "America/New_York", "America/Chicago", "America/Los_Angeles",
         "America/Sao_Paulo", "Asia/Kolkata", "Asia/Tokyo", "Australia/Sydney", "UTC",
         "Africa/Lagos", "Pacific/Auckland")
SORT_NAMES = ("newest", "oldest", "email", "progress", "progress_asc")
# Per mille, in this order: how a list looks some months after launch.
STATUS_MIX = (("active", 550), ("finished", 150), ("unsubscribed", 150), ("pending", 80),
              ("paused", 30), ("bounced", 30), ("complained", 10))


@dataclass
class Timing:
    name: str
    path: str  # one example
    ms: list[float]
    status: int = 200  # the first non-200 status seen, or 200
    note: str = ""

    def pick(self, q: float) -> float:
        s = sorted(self.ms)
        return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.admin",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=50, help="timed requests per page")
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--keep-db", action="store_true", help="leave the database for inspection")
    p.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL")
                   or "redis://127.0.0.1:6379/8", help="the app's Redis (not flushed)")
    p.add_argument("--pg-admin-url", default=os.environ.get("TEST_POSTGRES_ADMIN_URL")
                   or seed.PG_ADMIN_URL)
    args = p.parse_args(argv)
    if args.subscribers < 1000:
        p.error("--subscribers must be at least 1000")
    return args


def app_env(args: argparse.Namespace, db_url: str, tmp: Path) -> dict[str, str]:
    """The environment gunicorn gets, as a deployment would set it (plain HTTP here, so the
    development setting keeps the session cookie usable without TLS)."""
    return dict(
        DATABASE_URL=db_url, REDIS_URL=args.redis_url,
        SECRET_KEY=SECRET_KEY, MINICOURSE_ENV="development", MAIL_BACKEND="memory",
        MAIL_FROM="course@bench.example.org", BASE_URL="http://127.0.0.1",
        MINICOURSE_INSTANCE=str(tmp / "instance"), RATELIMIT_STORAGE_URI="memory://",
    )


# --- seeding ----------------------------------------------------------------------------


def _array(values: tuple[str, ...]) -> str:
    return "ARRAY[" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _status_case(h: str) -> str:
    """A CASE picking a status from ``STATUS_MIX`` by the per-mille hash ``h``."""
    parts, upto = [], 0
    for status, share in STATUS_MIX:
        upto += share
        parts.append(f"WHEN {h} < {upto} THEN '{status}'")
    return "CASE " + " ".join(parts) + " ELSE 'active' END"


def _secondary_indexes(conn: sa.Connection) -> list[tuple[str, str]]:
    """Indexes on the seeded tables that back no constraint: (name, definition)."""
    rows = conn.execute(sa.text(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i "
        "WHERE i.schemaname = 'public' AND i.tablename IN ('subscriber', 'delivery', 'event') "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"))
    return [(str(n), str(d)) for n, d in rows]


def seed_all(engine: sa.Engine, count: int, slugs: list[str], cadence: int) -> dict[str, int]:
    """``count`` subscribers, their deliveries and some events, each table in one statement.

    The indexes that back no constraint are dropped first and rebuilt afterwards from their
    own definitions (as the migrations made them): building an index once is much faster
    than maintaining it row by row.
    """
    now = datetime.now(UTC).replace(tzinfo=None)
    start = now - timedelta(days=730)
    length = len(slugs)
    h = "(abs(hashint8(g)) % 1000)"  # a per-mille hash of the row number, uncorrelated
    subscribers = f"""
        INSERT INTO subscriber (email, name, timezone, status, consent_at, consent_ip,
            consent_user_agent, consent_version, confirmed_at, unsubscribed_at, finished_at,
            completed_at, next_position, next_send_at, created_at, updated_at)
        SELECT lower(translate(f, 'áéíü''', 'aeiu')) || '.' || lower(translate(l, 'áéíü''',
                   'aeiu')) || g || '@' || ({_array(DOMAINS)})[1 + (g / 3) % {len(DOMAINS)}],
               CASE WHEN g % 10 = 0 THEN '' ELSE f || ' ' || l END,
               ({_array(ZONES)})[1 + (g * 7) % {len(ZONES)}],
               st, joined, '198.51.100.' || (g % 250), 'Mozilla/5.0 (bench)', 'signup-v1',
               CASE WHEN st <> 'pending' THEN joined + interval '3 minutes' END,
               CASE WHEN st IN ('unsubscribed', 'complained') THEN joined + interval '9 days'
                    END,
               CASE WHEN st = 'finished' THEN joined + make_interval(days => :span) END,
               CASE WHEN st = 'finished' AND g % 3 = 0
                    THEN joined + make_interval(days => :span + 1) END,
               pos,
               CASE WHEN st = 'active' THEN :now + make_interval(secs => (g % 86400)::float)
                    END,
               joined, joined
        FROM (
            SELECT g, f, l, st, joined,
                   CASE WHEN st = 'pending' THEN 1 WHEN st = 'finished' THEN :length + 1
                        ELSE 1 + (g / 7) % :length END AS pos
            FROM (
                SELECT g, ({_array(FIRST)})[1 + g % {len(FIRST)}] AS f,
                       ({_array(LAST)})[1 + (g / {len(FIRST)}) % {len(LAST)}] AS l,
                       {_status_case(h)} AS st,
                       -- joined over two years, roughly in id order with some shuffling
                       :start + make_interval(secs => (g::float / :count) * 63072000
                                              + ((g * 7919) % 86400)) AS joined
                FROM generate_series(1::bigint, :count) AS g
            ) AS base
        ) AS s
    """
    # One delivery per lesson already sent; about 60% opened, a quarter clicked, a third
    # done, a few failed or left "unconfirmed", and the lesson in flight for some active ones.
    # Events are our own hits ("hit:" ids), as the pixel and the redirect store them.
    deliveries = """
        INSERT INTO delivery (subscriber_id, lesson_slug, position, content_hash, status,
            attempts, error, provider_message_id, scheduled_at, enqueued_at, claimed_at,
            sent_at, opened_at, human_opened_at, open_count, clicked_at, click_count,
            completed_at, created_at)
        SELECT id, (CAST(:slugs AS text[]))[p], p, 'bench', ds, 1,
               CASE WHEN ds = 'failed' THEN '550 5.1.1 mailbox unavailable' ELSE '' END,
               CASE WHEN ds = 'sent' THEN 'bench-' || id || '-' || p ELSE '' END,
               at, at, at,
               CASE WHEN ds = 'sent' THEN at + interval '4 seconds' END,
               CASE WHEN ds = 'sent' AND k < 60 THEN at + interval '2 hours' END,
               CASE WHEN ds = 'sent' AND k < 50 THEN at + interval '2 hours' END,
               CASE WHEN ds = 'sent' AND k < 60 THEN 1 + k % 3 ELSE 0 END,
               CASE WHEN ds = 'sent' AND k < 25 THEN at + interval '3 hours' END,
               CASE WHEN ds = 'sent' AND k < 25 THEN 1 ELSE 0 END,
               CASE WHEN ds = 'sent' AND k < 33 THEN at + interval '1 day' END,
               at
        FROM (
            SELECT s.id, p, ((s.id * 7 + p * 13) % 100) AS k,
                   CASE WHEN p = s.next_position THEN 'queued'
                        WHEN (s.id + p) % 2003 = 0 THEN 'failed'
                        WHEN (s.id + p) % 4001 = 0 THEN 'unconfirmed'
                        ELSE 'sent' END AS ds,
                   s.created_at + make_interval(days => (p - 1) * :cadence, hours => 1) AS at
            FROM subscriber s
            CROSS JOIN LATERAL generate_series(
                1, LEAST(s.next_position - CASE WHEN s.status = 'active' AND s.id % 20 = 0
                                                THEN 0 ELSE 1 END, :length)) AS p
        ) AS d
    """
    events = """
        INSERT INTO event (subscriber_id, delivery_id, kind, occurred_at, url, machine,
                           user_agent, provider_event_id)
        SELECT subscriber_id, id, CASE WHEN clicked_at IS NOT NULL THEN 'click' ELSE 'open' END,
               coalesce(clicked_at, opened_at),
               CASE WHEN clicked_at IS NOT NULL
                    THEN 'https://example.org/read/' || (id % 3) END,
               id % 5 = 0, 'Mozilla/5.0 (bench)', 'hit:bench-' || id
        FROM delivery WHERE opened_at IS NOT NULL AND id % 10 = 0
    """
    params = dict(now=now, start=start, count=count, length=length,
                  span=length * cadence, cadence=cadence, slugs=slugs)
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        conn.execute(sa.text("SET LOCAL maintenance_work_mem = '256MB'"))
        indexes = _secondary_indexes(conn)
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        figures = {}
        for table, sql in (("subscribers", subscribers), ("deliveries", deliveries),
                           ("events", events)):
            t = time.perf_counter()
            figures[table] = conn.execute(sa.text(sql), params).rowcount
            log(f"  {figures[table]:,} {table} in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        for _, definition in indexes:
            conn.execute(sa.text(definition))
        log(f"  {len(indexes)} indexes rebuilt in {time.perf_counter() - t:.1f} s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        t = time.perf_counter()
        conn.execute(sa.text("VACUUM ANALYZE subscriber, delivery, event"))
        log(f"  VACUUM ANALYZE in {time.perf_counter() - t:.1f} s")
    return figures


def create_admin_account(env: dict[str, str]) -> None:
    """The admin account the benchmark signs in with."""
    from course import create_app
    from course.admin_accounts import create_admin
    from course.extensions import db

    app = create_app({"ENV": env})
    with app.app_context():
        create_admin(ADMIN_EMAIL, ADMIN_PASSWORD)
        db.engine.dispose()


def course_facts(env: dict[str, str]) -> tuple[list[str], int]:
    from course import create_app
    from course.content import current_course

    app = create_app({"ENV": env})
    with app.app_context():
        course = current_course()
        return [lesson.slug for lesson in course.lessons], course.cadence_days


def figure_seconds(env: dict[str, str]) -> dict[str, float]:
    """How long each cached figure (dashboard and Lessons page) takes to compute: what the
    background refresh job pays, and the first visit after Redis lost them."""
    from course import create_app
    from course.admin import dashboard
    from course.extensions import db
    from course.timeutil import utcnow

    app = create_app({"ENV": env})
    seconds = {}
    with app.app_context():
        for name in dashboard.EVERY_FIGURE:
            t = time.perf_counter()
            dashboard.compute([name], utcnow())
            seconds[name] = time.perf_counter() - t
            db.session.rollback()
        db.engine.dispose()
    return seconds


# --- the server and the client ----------------------------------------------------------


def start_gunicorn(workers: int, env: dict[str, str],
                   logfile: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    port = procs.free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--log-level", "warning", "wsgi:app"]
    proc = subprocess.Popen(argv, cwd=procs.ROOT, env=env, stdout=logfile, stderr=logfile)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("gunicorn exited while starting (see its log)")
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    procs.stop([proc])
    raise RuntimeError("gunicorn did not start (see its log)")


CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def sign_in(base: str) -> requests.Session:
    """A browser-like session: the login form's CSRF token, then the POST, then cookies."""
    session = requests.Session()
    form = session.get(f"{base}/admin/login", timeout=30)
    m = CSRF_RE.search(form.text)
    if not m:
        raise RuntimeError("the login page has no CSRF token")
    resp = session.post(f"{base}/admin/login", timeout=30, allow_redirects=False,
                        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD,
                              "csrf_token": m.group(1)})
    if resp.status_code != 302:
        raise RuntimeError(f"signing in failed: HTTP {resp.status_code}")
    return session


def page_paths(engine: sa.Engine, count: int, length: int,
               rng: random.Random) -> dict[str, Callable[[], str]]:
    """Each page to time, as a function giving the next URL (varied, like real use)."""
    with engine.connect() as c:
        deep = c.execute(sa.text(
            "SELECT id FROM subscriber ORDER BY created_at DESC, id DESC OFFSET :n LIMIT 1"),
            {"n": count // 2}).scalar_one()
        deep_email = c.execute(sa.text(
            "SELECT id FROM subscriber ORDER BY email OFFSET :n LIMIT 1"),
            {"n": count // 2}).scalar_one()
        max_id = int(c.execute(sa.text("SELECT max(id) FROM subscriber")).scalar_one())
        sample = [rng.randint(1, max_id) for _ in range(500)]
        emails = list(c.execute(sa.text("SELECT email FROM subscriber WHERE id = ANY(:ids)"),
                                {"ids": sample}).scalars())
    # The middle of some subscriber's address, e.g. "pper417": a few matches at most.
    email_parts = [m.group(0) for e in emails if (m := re.search(r"[a-z]{3}\d+", e))]
    deep_page = count // 2 // 50 + 1
    statuses = [s for s, _ in STATUS_MIX]

    def name_part() -> str:
        # Four letters of a first or last name, sometimes in capitals: thousands of matches.
        word = rng.choice(FIRST + LAST)
        start = rng.randint(0, max(0, len(word) - 4))
        return word[start:start + 4].upper() if rng.random() < 0.3 else word[start:start + 4]

    return {
        "list, page 1": lambda: "/admin/subscribers",
        "list, deep page (half way)":
            lambda: f"/admin/subscribers?after={deep}&page={deep_page}",
        "list by email, deep page": lambda: f"/admin/subscribers?sort=email&after={deep_email}",
        "list by progress": lambda: "/admin/subscribers?sort=progress",
        "search, part of an email":
            lambda: f"/admin/subscribers?q={rng.choice(email_parts)}",
        "search, part of a name": lambda: f"/admin/subscribers?q={name_part()}",
        "filter, status": lambda: f"/admin/subscribers?status={rng.choice(statuses)}",
        "filter, next lesson": lambda: f"/admin/subscribers?lesson={rng.randint(1, length)}",
        "filter, status + lesson, oldest":
            lambda: (f"/admin/subscribers?status={rng.choice(statuses[:3])}"
                     f"&lesson={rng.randint(1, length)}&sort=oldest"),
        "filter, status, any order":
            lambda: (f"/admin/subscribers?status={rng.choice(statuses)}"
                     f"&sort={rng.choice(SORT_NAMES)}"),
        "subscriber page": lambda: f"/admin/subscribers/{rng.randint(1, max_id)}",
        "dashboard": lambda: "/admin/dashboard",
        "lessons (per-lesson figures, loss, links)": lambda: "/admin/lessons",
        "a lesson's page": lambda: f"/admin/lessons/{rng.randint(1, length)}",
    }


def time_pages(session: requests.Session, base: str, pages: dict[str, Callable[[], str]],
               n: int) -> list[Timing]:
    results = []
    for name, next_path in pages.items():
        timing = Timing(name, next_path(), [])
        for i in range(WARMUP + n):
            path = next_path()
            t = time.perf_counter()
            resp = session.get(base + path, timeout=60, allow_redirects=False)
            ms = (time.perf_counter() - t) * 1000
            if resp.status_code != 200:
                timing.status = resp.status_code
                timing.path = path
                break
            if i >= WARMUP:
                timing.ms.append(ms)
        if timing.status == 200:
            log(f"{name}: p50 {timing.pick(0.5):.0f} ms, p95 {timing.pick(0.95):.0f} ms")
        else:
            log(f"{name}: HTTP {timing.status} for {timing.path}")
        results.append(timing)
    return results


# --- the report -------------------------------------------------------------------------



def _busy_warning(load: str) -> list[str]:
    cores = os.cpu_count() or 1
    one_minute = float(load.split()[0])
    if one_minute <= cores / 2:
        return []
    return [f"WARNING: the machine was already busy (load {one_minute:.2f} on {cores} cores): "
            "the figures below are pessimistic; re-run on a quiet machine"]


def report(args: argparse.Namespace, timings: list[Timing], seeded: dict[str, int],
           seed_seconds: float, info: dict[str, str], load_before: str,
           figures: dict[str, float] | None = None) -> str:
    width = max(len(t.name) for t in timings)
    lines = [
        "Minicourse admin pages benchmark",
        f"machine: {info['cpu']}, {info['cores']}, {info['ram']} RAM, {info['os']}",
        f"software: {info['software']}",
        f"load average (1, 5, 15 min) before: {load_before}, after: {info['load']}",
        *_busy_warning(load_before),
        f"parameters: {seeded['subscribers']:,} subscribers, {seeded['deliveries']:,} "
        f"deliveries, {seeded['events']:,} events; {args.requests} timed requests per page "
        f"after {WARMUP} warm-ups, one at a time; gunicorn, {args.workers} sync workers",
        f"seeding: {seed_seconds:.1f} s",
        "",
        f"{'page':<{width}}  {'p50':>8}  {'p95':>8}  {'max':>8}",
    ]
    for t in timings:
        if t.status != 200:
            lines.append(f"{t.name:<{width}}  HTTP {t.status} ({t.path})")
            continue
        lines.append(f"{t.name:<{width}}  {t.pick(0.5):>5.0f} ms  {t.pick(0.95):>5.0f} ms  "
                     f"{max(t.ms):>5.0f} ms")
    if figures:
        lines += ["", "cached figures, computed by the background refresh (not on a page view):"]
        lines += [f"  {name}: {sec:.2f} s" for name, sec in figures.items()]
    lines += ["", f"targets (p95 < {TARGET_MS:.0f} ms):"]
    for t in timings:
        if t.status == 404 and t.name == "dashboard":
            lines.append(f"  {t.name}: MISSING (HTTP 404 at {t.path})")
        elif t.status != 200:
            lines.append(f"  {t.name}: FAIL (HTTP {t.status})")
        else:
            p95 = t.pick(0.95)
            verdict = "PASS" if p95 < TARGET_MS else "FAIL"
            lines.append(f"  {t.name}: {verdict} (p95 {p95:.0f} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rng = random.Random(5)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mc-bench-")))
        logfile = stack.enter_context(open(tmp / "processes.log", "wb"))
        db_name, db_url = seed.throwaway_database(stack, args.pg_admin_url, args.keep_db)
        log(f"database {db_name}: migrating")
        env = app_env(args, db_url, tmp)
        seed.migrate({"ENV": env})
        slugs, cadence = course_facts(env)
        engine = sa.create_engine(db_url, pool_size=2)
        stack.callback(engine.dispose)
        log(f"seeding {args.subscribers:,} subscribers")
        t = time.perf_counter()
        seeded = seed_all(engine, args.subscribers, slugs, cadence)
        seed_seconds = time.perf_counter() - t
        create_admin_account(env)
        log("timing the cached figures")
        figures = figure_seconds(env)
        full_env = {**os.environ, **env, "PYTHONPATH": str(procs.ROOT)}
        log(f"starting gunicorn, {args.workers} workers")
        server, base = start_gunicorn(args.workers, full_env, logfile)
        stack.callback(procs.stop, [server])
        try:
            session = sign_in(base)
            pages = page_paths(engine, args.subscribers, len(slugs), rng)
            timings = time_pages(session, base, pages, args.requests)
        except BaseException:
            logfile.flush()
            tail = (tmp / "processes.log").read_text(errors="replace")[-4000:]
            log(f"failed; the end of the server's log:\n{tail}")
            raise
        print(report(args, timings, seeded, seed_seconds, machine(engine), load_before,
                     figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
