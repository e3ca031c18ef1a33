"""Sending at scale through SendGrid: lessons per second from tick to all marked sent.

Seeds N due subscribers on a fresh PostgreSQL database, starts the local SendGrid server
(answering after --latency seconds) and N app workers as separate processes, enqueues
the tick, and times until every delivery is ``sent``; then runs the naive way (one RQ job
and one API call per email, official client) on a sample, and prints both and the ratio.

    python -m bench.delivery [--subscribers 100000] [--workers 2] [--latency 0.05]
                             [--baseline 2000] [--keep-db] [--redis-url URL]

Progress goes to stderr, the report to stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import IO, Any

import psutil
import sqlalchemy as sa
from flask import Flask
from redis import Redis
from rq.job import Job
from rq.registry import StartedJobRegistry

from bench import procs, seed
from bench.baseline import BaselineResult, run_baseline
from bench.host import machine
from bench.procs import log

API_KEY = "SG.bench-key"
SECRET_KEY = "bench-secret-key-long-enough-for-any-check-0123456789"
TARGET_RATE, TARGET_RATIO, TARGET_MB = 10_000, 100, 200
MB = 1_000_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class OursResult:
    total: int
    sent: int
    wall: float
    cpu: dict[str, float]  # CPU seconds in the window: workers, server, postgres, ...
    peak_rss: int
    peak_rss_parent: int
    processes_seen: int
    tick: dict[str, Any] = field(default_factory=dict)
    jobs: list[float] = field(default_factory=list)  # send job durations, seconds
    statuses: dict[str, int] = field(default_factory=dict)
    server: dict[str, int] = field(default_factory=dict)
    postgres_own: float = 0.0  # CPU seconds of this database's backends (BackendSampler)

    @property
    def rate(self) -> float:
        return self.sent / self.wall if self.wall > 0 else 0.0


class BackendSampler:
    """CPU seconds of this run's own PostgreSQL backends, whatever else the server serves.

    Every ``interval`` the postmaster's children whose title names this database are read
    (user + system, from /proc); a backend's last reading counts, less what it had used
    before the window. A backend's last moments before it exits (under ``interval``) are
    missed, so this slightly undercounts; the postmaster total is the upper bound.
    """

    def __init__(self, postmaster: list[int], database: str, interval: float = 0.05):
        self.postmaster, self.tag = postmaster, f" {database} "
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.ours: dict[int, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BackendSampler:
        self.sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self, first: bool = False) -> None:
        for pid in self._children():
            if pid not in self.ours:  # a backend's title names its database; read it once
                try:
                    self.ours[pid] = self.tag in " ".join(psutil.Process(pid).cmdline()) + " "
                except psutil.Error:
                    self.ours[pid] = False
            if not self.ours[pid]:
                continue
            used = _cpu_of(pid)
            if used is None:
                continue
            if first:
                self.first[pid] = used
            self.last[pid] = used

    def _children(self) -> list[int]:
        pids: list[int] = []
        for parent in self.postmaster:
            try:  # the kernel's own list: no walk over every process on the machine
                text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
                pids += [int(p) for p in text.split()]
            except (OSError, ValueError):
                try:
                    pids += [c.pid for c in psutil.Process(parent).children()]
                except psutil.Error:
                    pass
        return pids

    @property
    def seconds(self) -> float:
        return sum(used - self.first.get(pid, 0.0) for pid, used in self.last.items())


def _cpu_of(pid: int) -> float | None:
    """User + system CPU seconds of a live process, straight from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.delivery",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=100_000)
    # Two per core, as the README advises for production: a worker waiting on the API's
    # answer leaves its core to another. The baseline gets the same number.
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--latency", type=float, default=0.05, help="server answer delay, seconds")
    p.add_argument("--baseline", type=int, default=2000, help="emails sent the naive way")
    p.add_argument("--keep-db", action="store_true", help="leave the database for inspection")
    p.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL")
                   or "redis://127.0.0.1:6379/8", help="a Redis DB the benchmark may flush")
    p.add_argument("--pg-admin-url", default=os.environ.get("TEST_POSTGRES_ADMIN_URL")
                   or seed.PG_ADMIN_URL)
    p.add_argument("--stall", type=float, default=60.0,
                   help="give up after this many seconds without progress once the tick "
                        "has finished (the tick itself is bounded by its job timeout)")
    return p.parse_args(argv)


def app_env(args: argparse.Namespace, db_url: str, server_url: str, tmp: Path) -> dict[str, str]:
    """The environment every app process gets, as a deployment would set it."""
    return dict(
        DATABASE_URL=db_url, REDIS_URL=args.redis_url, SECRET_KEY=SECRET_KEY,
        MINICOURSE_ENV="development", MAIL_BACKEND="sendgrid", SENDGRID_API_KEY=API_KEY,
        SENDGRID_API_HOST=server_url, MAIL_FROM="course@bench.example.org",
        BASE_URL="https://course.bench.example.org", MINICOURSE_INSTANCE=str(tmp / "instance"),
        SEND_RATE="0", RATELIMIT_ENABLED="false",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    conn = Redis.from_url(args.redis_url)
    conn.ping()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mc-bench-")))
        logfile = stack.enter_context(open(tmp / "processes.log", "wb"))
        log(f"flushing Redis {args.redis_url}")
        conn.flushdb()
        stack.callback(conn.flushdb)
        db_name, db_url = seed.throwaway_database(stack, args.pg_admin_url, args.keep_db)
        log(f"database {db_name}: migrating")
        server, server_url = procs.start_sendgrid_server(args.latency, logfile)
        stack.callback(procs.stop, [server])
        env = app_env(args, db_url, server_url, tmp)
        seed.migrate({"ENV": env})
        from course import create_app

        app = create_app({"ENV": env})
        engine = sa.create_engine(db_url, pool_size=2)
        stack.callback(engine.dispose)
        with app.app_context():
            from course.content import current_course

            lessons = current_course().length
        log(f"seeding {args.subscribers:,} due subscribers")
        t = time.perf_counter()
        seed.seed_subscribers(engine, args.subscribers, lessons)
        log(f"seeded in {time.perf_counter() - t:.1f} s")
        full_env = {**os.environ, **env, "PYTHONPATH": str(procs.ROOT)}
        try:
            ours = run_ours(args, app, conn, engine, server, server_url, full_env, logfile)
            log(f"baseline: {args.baseline:,} emails the naive way")
            base = run_baseline(app, conn, count=args.baseline, workers=args.workers,
                                server_url=server_url, api_key=API_KEY, env=full_env,
                                logfile=logfile, timeout=max(args.stall, 600.0))
        except BaseException:
            logfile.flush()
            tail = (tmp / "processes.log").read_text(errors="replace")[-4000:]
            log(f"failed; the end of the processes' log:\n{tail}")
            raise
        info = {**machine(engine, conn), "load_before": load_before}
        print(report(args, ours, base, info), flush=True)
    return 0


def run_ours(args: argparse.Namespace, app: Flask, conn: Redis, engine: sa.Engine,
             server: Any, server_url: str, env: dict[str, str],
             logfile: IO[bytes]) -> OursResult:
    """Start the app workers, enqueue the tick, and time until every delivery is sent."""
    from course.queue import MAIL_QUEUE, TICK_QUEUE, enqueue

    argv = [sys.executable, "-m", "workers.worker", "--name", "{name}", "-l", "INFO"]
    started, names = procs.start_processes(argv, args.workers, env, logfile, "bench-w")
    try:
        log(f"starting {args.workers} workers")
        procs.wait_for_workers(conn, names, started)
        pids = [p.pid for p in started]
        groups = {"workers": pids, "server": [server.pid], "postgres": _postmaster(engine)}
        backends = BackendSampler(groups["postgres"], str(engine.url.database))
        with procs.MemorySampler(pids) as sampler, backends:
            cpu0 = procs.cpu_snapshot(groups)
            log("tick")
            t0, t0_wall = time.perf_counter(), time.time()
            with app.app_context():
                job = enqueue("workers.tasks.tick", queue_name=TICK_QUEUE, retries=0)
            sent, wall = _wait_all_sent(args, conn, engine, server_url, job, t0)
            _wait_idle(conn, MAIL_QUEUE)
            cpu1 = procs.cpu_snapshot(groups)
    finally:
        procs.stop(started)
    return OursResult(
        total=args.subscribers, sent=sent, wall=wall,
        cpu={k: cpu1[k] - cpu0[k] for k in cpu0},
        peak_rss=sampler.max_rss(), peak_rss_parent=sampler.max_rss("worker"),
        processes_seen=sampler.processes_seen, tick=_tick_figures(conn, job.id, t0_wall),
        jobs=_job_durations(conn, MAIL_QUEUE), statuses=_statuses(engine),
        server=server_stats(server_url), postgres_own=backends.seconds,
    )


def _postmaster(engine: sa.Engine) -> list[int]:
    """PostgreSQL's main process, when it runs on this machine (its CPU is counted too)."""
    with engine.connect() as c:
        backend = int(c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
    try:
        return [psutil.Process(backend).ppid()]
    except psutil.Error:
        return []


def _job_durations(conn: Redis, queue_name: str) -> list[float]:
    from rq import Queue
    from rq.registry import FinishedJobRegistry

    registry = FinishedJobRegistry(queue=Queue(queue_name, connection=conn))
    jobs = Job.fetch_many(registry.get_job_ids(), connection=conn)
    return sorted((j.ended_at - j.started_at).total_seconds()
                  for j in jobs if j is not None and j.started_at and j.ended_at)


def _wait_all_sent(args: argparse.Namespace, conn: Redis, engine: sa.Engine,
                   server_url: str, job: Job, t0: float) -> tuple[int, float]:
    """Poll cheaply (the server's counter) until it has everything, then the database
    closely, so polling does not steal the CPU it measures. Returns (sent, wall time)."""
    total = args.subscribers
    sent = accepted = 0
    last_change = last_log = last_count = t0
    while True:
        now = time.perf_counter()
        tick_status = job.get_status(refresh=True)
        new_accepted = server_stats(server_url)["entries"]
        # Counting in the database reads the whole delivery table (tens of ms of the very
        # PostgreSQL CPU being measured): every 5 s for the progress line, then closely.
        if new_accepted >= total or now - last_count >= 5.0:
            last_count = now
            new_sent = _count_sent(engine)
            if new_sent >= total:
                return new_sent, time.perf_counter() - t0
            if (new_sent, new_accepted) != (sent, accepted):
                last_change = now
            sent = new_sent
        elif new_accepted != accepted:
            last_change = now
        accepted = new_accepted
        if now - last_log >= 1.0:
            last_log = now
            log(f"sending: {sent:,}/{total:,} sent, {accepted:,} accepted by the server, "
                f"tick {getattr(tick_status, 'value', tick_status)} ({now - t0:.1f} s)")
        if tick_status == "failed":
            log(f"the tick failed: {job.latest_result()}")
            return _count_sent(engine), time.perf_counter() - t0
        if tick_status in ("queued", "started"):
            last_change = now  # the tick works inside the database: no visible progress yet
        elif now - last_change > args.stall:
            log(f"no progress for {args.stall:.0f} s: giving up")
            return _count_sent(engine), time.perf_counter() - t0
        time.sleep(0.02 if accepted >= total else 0.1)


def _count_sent(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.text("SELECT count(*) FROM delivery WHERE status = 'sent'"))
                   .scalar_one())


def _statuses(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT status, count(*) FROM delivery GROUP BY status"))
        return {str(s): int(n) for s, n in rows}


def _wait_idle(conn: Redis, queue_name: str, timeout: float = 10.0) -> None:
    """Let the last work horses exit, so their CPU shows in their worker's children."""
    from rq import Queue

    registry = StartedJobRegistry(queue=Queue(queue_name, connection=conn))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and registry.count:
        time.sleep(0.02)
    time.sleep(0.1)


def _tick_figures(conn: Redis, job_id: str, t0_wall: float) -> dict[str, Any]:
    """How long the tick job ran, and when it ended counting from its enqueueing."""
    job = Job.fetch(job_id, connection=conn)
    status = job.get_status()
    out: dict[str, Any] = {"status": getattr(status, "value", status)}
    if job.started_at and job.ended_at:
        out["seconds"] = (job.ended_at - job.started_at).total_seconds()
        ended = job.ended_at
        ended = ended if ended.tzinfo else ended.replace(tzinfo=UTC)
        out["ended_after"] = ended.timestamp() - t0_wall
    value = job.return_value()
    if isinstance(value, dict):
        out.update(value)
    return out


def server_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_stats", timeout=10) as response:
        return dict(json.load(response))



def _job_lines(durations: list[float]) -> list[str]:
    if not durations:
        return []
    n = len(durations)
    pick = [durations[min(n - 1, int(q * n))] * 1000 for q in (0.5, 0.95)]
    return [f"  send jobs: {n}, duration median {pick[0]:.0f} ms, p95 {pick[1]:.0f} ms, "
            f"max {durations[-1] * 1000:.0f} ms"]


def _after_tick(ours: OursResult) -> list[str]:
    """The sending that was left once the tick had finished (it overlaps the tick's end)."""
    ended = ours.tick.get("ended_after")
    if ended is None or ours.wall <= ended:
        return []
    rest = ours.wall - ended
    return [f"  after the tick ended: {rest:.2f} s more to all sent "
            f"(the tick ended {ended:.2f} s in)"]


def _busy_warning(load: str) -> list[str]:
    """Other work on the machine slows every figure here: say so next to them."""
    cores = os.cpu_count() or 1
    one_minute = float(load.split()[0])
    if one_minute <= cores / 2:
        return []
    return [f"WARNING: the machine was already busy (load {one_minute:.2f} on {cores} cores): "
            "the figures below are pessimistic; re-run on a quiet machine"]


def _mb(n: int) -> str:
    return f"{n / MB:.1f} MB"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(args: argparse.Namespace, ours: OursResult, base: BaselineResult,
           info: dict[str, str]) -> str:
    ratio = ours.rate / base.rate if base.rate else float("inf")
    all_sent = ours.sent == ours.total and ours.statuses.get("sent", 0) == ours.total
    tick, cpu = ours.tick, ours.cpu
    requests = ours.server.get("accepted_requests", 0)
    statuses = ", ".join(f"{k}={v:,}" for k, v in sorted(ours.statuses.items()))
    lines = [
        "Minicourse delivery benchmark",
        f"machine: {info['cpu']}, {info['cores']}, {info['ram']} RAM, {info['os']}",
        f"software: {info['software']}",
        f"load average (1, 5, 15 min) before: {info['load_before']}, after: {info['load']}",
        *_busy_warning(info["load_before"]),
        f"parameters: {args.subscribers:,} due subscribers, {args.workers} workers, "
        f"server latency {args.latency * 1000:.0f} ms, baseline sample {args.baseline:,}",
        "",
        "ours (tick -> send jobs of up to 5,000 lessons -> one API call per 1,000):",
        f"  lessons: {ours.total:,}",
        f"  all sent: {'yes' if all_sent else 'no'} ({statuses})",
        f"  tick: {tick.get('seconds', float('nan')):.2f} s, created {tick.get('created', 0):,}"
        f", enqueued {tick.get('enqueued', 0):,} (job {tick.get('status')})",
        f"  wall time, tick start to all sent: {ours.wall:.2f} s",
        *_after_tick(ours),
        f"  lessons/s: {ours.rate:,.0f}",
        f"  CPU seconds, workers and tick: {cpu['workers']:.2f} "
        f"({cpu['workers'] / max(ours.sent, 1) * 1e6:.0f} us per lesson)",
        f"  CPU seconds, others: PostgreSQL {cpu['postgres']:.2f} (all its databases; "
        f"this run's connections {ours.postgres_own:.2f}, "
        f"{ours.postgres_own / max(ours.sent, 1) * 1e6:.0f} us per lesson), "
        f"SendGrid server {cpu['server']:.2f}, this script {cpu['bench']:.2f}",
        f"  CPU seconds, whole machine busy: {cpu['machine']:.2f} "
        f"of {ours.wall * (os.cpu_count() or 1):.2f} available",
        *_job_lines(ours.jobs),
        f"  worker peak memory: {_mb(ours.peak_rss)} (largest single process of "
        f"{ours.processes_seen} sampled; worker parents {_mb(ours.peak_rss_parent)})",
        f"  API requests: {requests:,} ({ours.server.get('entries', 0) / max(requests, 1):,.0f}"
        f" recipients each), recipients accepted: {ours.server.get('entries', 0):,}, "
        f"duplicates: {ours.server.get('duplicates', 0):,}",
        "",
        "baseline (naive: one RQ job and one API call per email, official client):",
        f"  emails: {base.emails:,} (finished {base.finished:,}, failed {base.failed:,})",
        f"  wall time: {base.wall:.2f} s",
        f"  emails/s: {base.rate:,.1f}",
        f"  CPU seconds, workers: {base.cpu:.2f} "
        f"({base.cpu / max(base.finished, 1) * 1e6:.0f} us per email)",
        f"  worker peak memory: {_mb(base.peak_rss)}",
        "",
        f"ratio ours/baseline: {ratio:,.0f}x",
        "targets:",
        f"  lessons/s >= {TARGET_RATE:,}: {_verdict(ours.rate >= TARGET_RATE)} "
        f"({ours.rate:,.0f})",
        f"  ratio >= {TARGET_RATIO}x: {_verdict(ratio >= TARGET_RATIO)} ({ratio:,.0f}x)",
        f"  worker peak memory < {TARGET_MB} MB: {_verdict(ours.peak_rss < TARGET_MB * MB)} "
        f"({_mb(ours.peak_rss)})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
