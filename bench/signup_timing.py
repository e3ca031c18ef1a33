"""Does signup's timing tell who is subscribed? Medians of signups of new addresses and of
addresses already taking the course, timed over HTTP against a real web process.

Creates a throw-away database (PostgreSQL, SQLite or both), migrates it with the project's
migrations, seeds --active active subscribers, starts ``gunicorn wsgi:app`` (one worker,
so requests never overlap) configured through the environment, and posts the signup form
(CSRF token and session cookie, as a browser does) alternately for a new address and for
an active one, --requests times each after a warm-up. Rate limits are off, and no worker
runs: the send jobs the signups queue wait in a Redis database that is flushed before and
after. It prints, per database, the median and 90th percentile of each path and their
difference, beside the machine it ran on. Not a pass-or-fail test: a figure to watch.

    python -m bench.signup_timing [--database both|postgresql|sqlite] [--requests 300]
                                  [--active 1000] [--redis-url URL] [--pg-admin-url URL]

Progress goes to stderr, the report to stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import requests
import sqlalchemy as sa
from redis import Redis

from bench import host, procs, seed

SECRET_KEY = "bench-signup-timing-secret-key-long-enough-to-pass"
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.signup_timing",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--database", choices=("both", "postgresql", "sqlite"), default="both")
    p.add_argument("--requests", type=int, default=300, help="timed signups per path")
    p.add_argument("--active", type=int, default=1000, help="active subscribers to seed")
    p.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL")
                   or "redis://127.0.0.1:6379/8", help="a Redis database the run flushes")
    p.add_argument("--pg-admin-url", default=os.environ.get("TEST_POSTGRES_ADMIN_URL")
                   or seed.PG_ADMIN_URL)
    args = p.parse_args(argv)
    if args.requests < 10 or args.active < args.requests + 20:
        p.error("--requests must be at least 10, and --active at least --requests + 20")
    return args


def seed_active(url: str, count: int) -> None:
    """``count`` active subscribers named ``active-N@bench.example.org``."""
    engine = sa.create_engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [{"email": f"active-{i}@bench.example.org", "name": "", "timezone": "UTC",
             "status": "active", "now": now} for i in range(count)]
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO subscriber (email, name, timezone, status, consent_at, consent_ip,"
            " consent_user_agent, consent_version, confirmed_at, next_position, created_at,"
            " updated_at) VALUES (:email, :name, :timezone, :status, :now, '', '', 'bench',"
            " :now, 2, :now, :now)"), rows)
    engine.dispose()


def start_web(db_url: str, redis_url: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = procs.free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(procs.ROOT), "DATABASE_URL": db_url,
           "REDIS_URL": redis_url, "SECRET_KEY": SECRET_KEY, "MAIL_BACKEND": "memory",
           "MAIL_FROM": "course@bench.example.org", "BASE_URL": base,
           "MINICOURSE_INSTANCE": str(tmp / "instance"), "RATELIMIT_ENABLED": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{port}",
         "--workers", "1"], cwd=procs.ROOT, env=env, stdout=(tmp / "web.log").open("wb"),
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: see {tmp / 'web.log'}")
        try:
            if requests.get(base + "/", timeout=10).status_code == 200:
                return proc, base
        except requests.ConnectionError:
            time.sleep(0.2)
    procs.stop([proc])
    raise RuntimeError("gunicorn did not answer within 60 s")


def time_signups(base: str, requests_per_path: int) -> dict[str, list[float]]:
    """Milliseconds per signup, new and active addresses alternating (so a drift in the
    machine's load hits both paths alike), after a warm-up of both."""
    session = requests.Session()
    token = CSRF_RE.search(session.get(base + "/", timeout=10).text)
    assert token, "the landing page has no CSRF token"
    form = {"csrf_token": token.group(1), "consent": "y", "name": "Ann"}
    times: dict[str, list[float]] = {"new": [], "active": []}
    warm_up = 10
    for i in range(requests_per_path + warm_up):
        for path in ("new", "active"):
            email = (f"new-{i}@bench.example.org" if path == "new"
                     else f"active-{i}@bench.example.org")
            start = time.perf_counter()
            res = session.post(base + "/", data={**form, "email": email}, timeout=10)
            elapsed = (time.perf_counter() - start) * 1000
            if res.status_code != 200 or "Check your inbox" not in res.text:
                raise RuntimeError(f"signup of {email} answered {res.status_code}")
            if i >= warm_up:
                times[path].append(elapsed)
    return times


def run_one(database: str, args: argparse.Namespace, stack: ExitStack,
            tmp: Path) -> tuple[str, dict[str, list[float]]]:
    if database == "postgresql":
        _, url = seed.throwaway_database(stack, args.pg_admin_url)
    else:
        url = f"sqlite:///{tmp / 'signup_timing.db'}"
    procs.log(f"{database}: migrating and seeding {args.active} active subscribers")
    seed.migrate({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": SECRET_KEY,
                  "REDIS_URL": args.redis_url, "MAIL_BACKEND": "memory"})
    seed_active(url, args.active)
    web, base = start_web(url, args.redis_url, tmp)
    try:
        procs.log(f"{database}: timing {args.requests} signups per path")
        return url, time_signups(base, args.requests)
    finally:
        procs.stop([web])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(results: dict[str, dict[str, list[float]]], machine: dict[str, str],
           requests_per_path: int) -> str:
    lines = ["Signup timing: new addresses vs. addresses already taking the course",
             f"({requests_per_path} signups per path, one gunicorn worker, over HTTP)", ""]
    for database, times in results.items():
        new, active = times["new"], times["active"]
        diff = statistics.median(new) - statistics.median(active)
        lines.append(f"{database}:")
        for path, values in (("new address", new), ("active address", active)):
            lines.append(f"  {path:<15} median {statistics.median(values):6.2f} ms   "
                         f"p90 {percentile(values, 0.9):6.2f} ms")
        lines.append(f"  difference of medians (new - active): {diff:+.2f} ms")
        lines.append("")
    lines.append("machine:")
    lines += [f"  {key}: {value}" for key, value in machine.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    databases = ["postgresql", "sqlite"] if args.database == "both" else [args.database]
    conn = Redis.from_url(args.redis_url)
    conn.flushdb()
    results: dict[str, dict[str, list[float]]] = {}
    engine = None
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="mc-signup-") as tmpdir:
        stack.callback(conn.flushdb)
        for database in databases:
            tmp = Path(tmpdir) / database
            tmp.mkdir()
            url, times = run_one(database, args, stack, tmp)
            results[database] = times
            if database == "postgresql":
                engine = sa.create_engine(url)
        machine = host.machine(engine, conn)
        if engine is not None:
            engine.dispose()
    print(report(results, machine, args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
