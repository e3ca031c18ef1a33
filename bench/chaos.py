"""The chaos test at scale: ``python -m bench.chaos`` (20,000 subscribers by default).

The same scenario as ``tests/test_chaos.py`` (see ``tests/chaos_scenario.py``): the whole
course through real worker processes killed at random, Redis flushed mid-run, duplicate
ticks and a SendGrid stand-in answering 429, 5xx and late, dropping connections before
and after reading the body and after accepting it, fully down for two minutes and
answering one 429 with ``Retry-After: 120``, and posting its Event Webhook events to the
app (signed, late, batched, some twice). It runs on PostgreSQL, in a database it creates
and drops, with Redis at ``TEST_REDIS_URL`` (flushed: give it a database of its own).
Prints the machine, the summary, every broken promise, how long settling took after the
last fault, and last the three counts taken from the server's ledger and the database:
``duplicates``, ``lost`` and ``unresolved``. Exits 1 if any promise was broken.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask

from bench import host
from course import create_app
from course.extensions import db
from tests.chaos_scenario import ChaosSettings, run_chaos
from tests.conftest import PG_ADMIN_URL, REDIS_URL, base_config


def machine() -> str:
    info = host.machine()
    return (f"machine: {info['cpu']}, {info['cores']}, {info['ram']} RAM, {info['os']}, "
            f"{info['software']}; load average {info['load']}")

def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos",
                                     description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--job-size", type=int, default=500,
                        help="deliveries per send job (the tick batches up to 1,000)")
    parser.add_argument("--kills", type=int, default=8, help="workers killed during the run")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds")
    parser.add_argument("--outage", type=float, default=120.0,
                        help="seconds the provider answers 503 to everything")
    parser.add_argument("--retry-after", type=int, default=120,
                        help="the Retry-After of one 429, in seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    args = parser.parse_args(argv)

    from flask_migrate import upgrade

    tmp = Path(tempfile.mkdtemp(prefix="mc-chaos-"))
    name = f"mc_chaos_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = re.sub(r"/[^/]+$", f"/{name}", args.pg_admin_url)

    def make_app(**overrides: Any) -> Flask:
        return create_app(base_config(url, tmp, REDIS_URL=args.redis_url,
                                      RATELIMIT_STORAGE_URI=args.redis_url, **overrides))

    try:
        app = make_app()
        with app.app_context():
            upgrade()
            db.engine.dispose()
        settings = ChaosSettings(subscribers=args.subscribers, workers=args.workers,
                                 job_size=args.job_size, kills=args.kills,
                                 deadline=args.deadline, seed=args.seed,
                                 outage_seconds=args.outage, retry_after=args.retry_after,
                                 unconfirmed_window=10)
        log(f"{args.subscribers} subscribers, {args.workers} workers, database {name}, "
            f"Redis {args.redis_url}, logs in {tmp}")
        report = run_chaos(make_app, settings, tmp, say=log)
    finally:
        if not args.keep_db:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    print(machine())
    print(report.summary())
    problems = report.problems()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if problems and report.worker_logs:
        print(report.worker_logs)
    settle = report.settle_seconds
    print("settled after the last fault: "
          + (f"{settle:.1f} s" if settle is not None else "never"))
    print(f"subscribers finished: {report.subscriber_states.get('finished', 0)} of "
          f"{report.subscribers}")
    print(report.counts())
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
