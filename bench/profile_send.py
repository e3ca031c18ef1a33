"""Where the time goes: the tick and the sends of a sample, in-process, under cProfile.

The delivery benchmark says how fast; this says why. It seeds a sample on a fresh
PostgreSQL database, runs the tick (capturing its send jobs instead of enqueueing them:
up to 5,000 lessons each) and then ``send_deliveries`` on every job against the local
SendGrid server, each phase under cProfile, and prints the top functions plus the SQL
statements each phase ran. It all runs in one process, so it shows neither the work
horse forked per job nor the other processes (see ``delivery.py`` for those).

    python -m bench.profile_send [--subscribers 10000] [--latency 0.05] [--top 25]

``--top 0`` skips cProfile and only times each phase (wall and CPU), for true proportions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from redis import Redis

from bench import procs, seed
from bench.delivery import app_env


class SQLCounter:
    """Counts statements and the time spent waiting on them (PostgreSQL round trips)."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        self._start: list[float] = []

    def attach(self, engine: sa.Engine) -> None:
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, *args: Any) -> None:
        self._start.append(time.perf_counter())

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        key = " ".join(statement.split())[:90]
        self.count[key] += 1
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - self._start.pop()

    def report(self, top: int = 8) -> str:
        total = sum(self.seconds.values())
        lines = [f"  SQL: {sum(self.count.values()):,} statements, {total:.2f} s waiting"]
        for key, secs in sorted(self.seconds.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {secs:7.2f} s {self.count[key]:6,}x  {key}")
        self.count.clear()
        self.seconds.clear()
        return "\n".join(lines)


def profiled(label: str, func: Any, top: int, sql: SQLCounter) -> Any:
    """Run ``func`` under cProfile (``top`` > 0) or just timed, and print what it cost."""
    prof = cProfile.Profile() if top > 0 else None
    t0, c0 = time.perf_counter(), time.process_time()
    result = prof.runcall(func) if prof else func()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"\n=== {label}: {wall:.2f} s wall, {cpu:.2f} s CPU in this process"
          f"{' (under cProfile)' if prof else ''} ===")
    print(sql.report())
    if prof:
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).strip_dirs()
        for order in ("tottime", "cumulative"):
            stats.sort_stats(order).print_stats(top)
        print(out.getvalue())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_send",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=10_000)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--top", type=int, default=25,
                   help="functions to list per phase; 0 times the phases without cProfile")
    p.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL")
                   or "redis://127.0.0.1:6379/8")
    p.add_argument("--pg-admin-url", default=seed.PG_ADMIN_URL)
    args = p.parse_args(argv)
    Redis.from_url(args.redis_url).flushdb()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mc-prof-")))
        logfile = stack.enter_context(open(tmp / "server.log", "wb"))
        name, db_url = seed.throwaway_database(stack, args.pg_admin_url)
        server, url = procs.start_sendgrid_server(args.latency, logfile)
        stack.callback(procs.stop, [server])
        env = app_env(argparse.Namespace(redis_url=args.redis_url), db_url, url, tmp)
        seed.migrate({"ENV": env})
        from course import create_app, pipeline
        from course.content import current_course
        from course.extensions import db

        app = create_app({"ENV": env})
        with app.app_context():
            seed.seed_subscribers(db.engine, args.subscribers, current_course().length)
            sql = SQLCounter()
            sql.attach(db.engine)
            batches: list[list[int]] = []
            result = profiled("tick", lambda: pipeline.tick(enqueue=batches.append),
                              args.top, sql)
            print(f"tick: created {result.created:,}, {len(batches)} send jobs")
            db.session.remove()

            def send_all() -> int:
                sent = 0
                for ids in batches:
                    sent += pipeline.send_deliveries(ids)
                    db.session.remove()
                return sent

            sent = profiled("send_deliveries, every job", send_all, args.top, sql)
            print(f"sent: {sent:,} in {len(batches)} jobs "
                  f"(server latency {args.latency * 1000:.0f} ms per request included)")
            db.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
