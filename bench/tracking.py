"""Tracking benchmark: open pixel and click redirect under load, against ``/healthz``.

``python -m bench.tracking`` starts gunicorn on a free port (its own processes, as in
production) on a fresh, migrated PostgreSQL database with real lesson deliveries and a
private redis-server, then drives it with ``wrk`` from another process (both installed
from Debian's packages when missing: ``bench/tools.py``): the trivial ``/healthz``
endpoint, the pixel and the click redirect in turn, with signed tokens for many
deliveries; once as deployed (valid hits answered by ``course.tracking_fast`` in front of
Flask) and once through the Flask views alone. It
prints requests/s, p50/p99 latency, each endpoint's ratio to ``/healthz`` in the same run
and gunicorn's CPU per request, with the machine and its load average. Afterwards it runs
the flusher and checks that every hit wrk counted became exactly one event.

Targets (2 cores): >= 5,000 pixel hits/s, p99 < 50 ms, ratio to /healthz >= 0.8.
``--fallback`` also measures the pixel with Redis unreachable (direct database writes),
``--unix-socket`` with Redis over a unix socket.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import psutil
import sqlalchemy as sa
from redis import Redis

from . import procs, seed
from .host import machine
from .procs import log
from .tools import ensure_programs

PROGRAMS = {"wrk": "wrk", "redis-server": "redis-server"}  # command -> Debian package

SECRET_KEY = "bench-secret-key-that-is-long-enough-for-production-checks"
TARGET_RATE = 5000.0
TARGET_P99_MS = 50.0
TARGET_RATIO = 0.8


@dataclass
class Run:
    name: str
    requests: int
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = 0.0  # gunicorn's CPU per request (its workers, user + system)


class CpuMeter:
    """CPU seconds used by gunicorn's process tree.

    Throughput on a shared machine swings with whatever else runs; the CPU each request
    costs swings much less, so it is reported next to requests/s. (redis-server's CPU is
    left out: other programs share it.)
    """

    def __init__(self, server: subprocess.Popen[bytes]):
        self.root = psutil.Process(server.pid)

    def total(self) -> float:
        used = 0.0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                used += t.user + t.system
            except psutil.Error:
                pass
        return used


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tracking",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    p.add_argument("--rounds", type=int, default=3, help="runs per endpoint (median kept)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--workers", type=int, default=2,
                   help="gunicorn worker processes (one per core)")
    p.add_argument("--worker-class", default="sync")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--deliveries", type=int, default=1000, help="deliveries to spread hits on")
    p.add_argument("--unix-socket", action="store_true",
                   help="also measure with Redis over a unix socket")
    p.add_argument("--fallback", action="store_true",
                   help="also measure the pixel with Redis unreachable (direct DB writes)")
    p.add_argument("--pg-admin-url", default=os.environ.get("TEST_POSTGRES_ADMIN_URL")
                   or seed.PG_ADMIN_URL)
    return p.parse_args(argv)


def app_env(args: argparse.Namespace, db_url: str, redis_url: str, tmp: Path) -> dict[str, str]:
    return dict(
        DATABASE_URL=db_url, REDIS_URL=redis_url, SECRET_KEY=SECRET_KEY,
        MINICOURSE_ENV="development", MAIL_BACKEND="memory", MAIL_FROM="c@bench.example.org",
        BASE_URL="http://127.0.0.1", MINICOURSE_INSTANCE=str(tmp / "instance"),
        RATELIMIT_STORAGE_URI="memory://",
    )


def seed_deliveries(engine: sa.Engine, count: int) -> list[int]:
    """``count`` subscribers, each sent lesson 1 an hour ago (outside the machine window)."""
    sent = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO subscriber (email, name, timezone, status, consent_ip, "
            "consent_user_agent, consent_version, next_position, created_at, updated_at) "
            "SELECT 'b' || g || '@bench.example.org', '', 'UTC', 'active', '', '', 'bench', 2, "
            ":now, :now FROM generate_series(1, :n) g"), {"n": count, "now": sent})
        c.execute(sa.text(
            "INSERT INTO delivery (subscriber_id, lesson_slug, position, content_hash, status, "
            "attempts, error, provider_message_id, scheduled_at, sent_at, open_count, "
            "click_count, created_at) SELECT id, 'bench-lesson', 1, '', 'sent', 1, '', '', "
            ":now, :now, 0, 0, :now FROM subscriber"), {"now": sent})
        return list(c.execute(sa.text("SELECT id FROM delivery ORDER BY id")).scalars())


def wrk_script(paths: list[str], tmp: Path, name: str) -> Path:
    """A wrk Lua script that cycles through ``paths`` (one token per delivery)."""
    script = tmp / f"{name}.lua"
    quoted = ",\n".join(f'"{p}"' for p in paths)
    script.write_text(
        f"local paths = {{\n{quoted}\n}}\nlocal i = 0\n"
        "wrk.headers['User-Agent'] = 'Mozilla/5.0 (X11; Linux x86_64) BenchMail/1.0'\n"
        "request = function()\n  i = i % #paths + 1\n"
        "  return wrk.format('GET', paths[i])\nend\n"
    )
    return script


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(base: str, script: Path, seconds: int, connections: int, name: str,
        meter: CpuMeter | None = None) -> Run:
    before = meter.total() if meter else 0.0
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         base], capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    for m in re.finditer(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out):
        if m.group(1):
            errors += int(m.group(1))
        else:
            errors += sum(int(n) for n in re.findall(r"\d+", m.group(2)))
    cpu = (meter.total() - before) / requests * 1e6 if meter and requests else 0.0
    return Run(name, requests, rate, p50, p99, errors, cpu)


def start_gunicorn(args: argparse.Namespace, env: dict[str, str],
                   logfile: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    port = procs.free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
            "--workers", str(args.workers), "--worker-class", args.worker_class,
            "--threads", str(args.threads), "--backlog", "2048", "--log-level", "warning",
            "wsgi:app"]
    proc = subprocess.Popen(argv, cwd=procs.ROOT, env=env, stdout=logfile, stderr=logfile)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                if response.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.2)
    procs.stop([proc])
    raise RuntimeError("gunicorn did not start (see its log)")


def measure(args: argparse.Namespace, base: str, scripts: dict[str, Path],
            meter: CpuMeter) -> tuple[dict[str, Run], int]:
    """Every endpoint ``rounds`` times, interleaved so drift hits each alike; the median.

    Also returns how many tracked requests (pixel and click, warm-ups included) completed.
    """
    tracked = 0
    for name, script in scripts.items():
        warm = wrk(base, script, 2, args.connections, name)  # imports, pools, caches
        tracked += warm.requests if name != "healthz" else 0
    runs: dict[str, list[Run]] = {name: [] for name in scripts}
    for round_ in range(args.rounds):
        for name, script in scripts.items():
            run = wrk(base, script, args.duration, args.connections, name, meter)
            log(f"round {round_ + 1} {name}: {run.rate:,.0f}/s p50 {run.p50_ms:.2f} ms "
                f"p99 {run.p99_ms:.2f} ms, {run.cpu_us:.0f} us CPU/request")
            runs[name].append(run)
            tracked += run.requests if name != "healthz" else 0
    medians = {name: sorted(rs, key=lambda r: r.rate)[len(rs) // 2] for name, rs in runs.items()}
    return medians, tracked


def flush_all(app: Any) -> tuple[int, float]:
    from course import tracking_buffer

    with app.app_context():
        t = time.perf_counter()
        stored = 0
        while tracking_buffer.pending():
            stored += tracking_buffer.flush()
        return stored, time.perf_counter() - t



def start_redis(tmp: Path, logfile: IO[bytes]) -> tuple[subprocess.Popen[bytes], str, str]:
    """A private redis-server for the run, on TCP and on a unix socket (no persistence).

    Private, so other programs using the machine's Redis neither slow the figures down nor
    see the benchmark's keys. Returns it and its TCP and unix-socket URLs.
    """
    port = procs.free_port()
    sock = tmp / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", str(sock),
         "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=logfile, stderr=logfile)
    tcp = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if Redis.from_url(tcp).ping() and sock.exists():
                return proc, tcp, f"unix://{sock}?db=0"
        except OSError:
            pass
        except Exception:  # redis.ConnectionError while it starts
            pass
        time.sleep(0.1)
    procs.stop([proc])
    raise RuntimeError("redis-server did not start")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = ensure_programs(PROGRAMS)
    if problem:
        print(f"bench.tracking {problem}", file=sys.stderr)
        return 2
    load_before = machine()["load"]
    from course import create_app, tracking_buffer
    from course.extensions import db

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mc-bench-")))
        logfile = stack.enter_context(open(tmp / "processes.log", "wb"))
        redis_proc, tcp_url, unix_url = start_redis(tmp, logfile)
        stack.callback(procs.stop, [redis_proc])
        conn = Redis.from_url(tcp_url)
        db_name, db_url = seed.throwaway_database(stack, args.pg_admin_url)
        env = app_env(args, db_url, tcp_url, tmp)
        seed.migrate({"ENV": env})
        engine = sa.create_engine(db_url)
        stack.callback(engine.dispose)
        ids = seed_deliveries(engine, args.deliveries)
        app = create_app({"ENV": env})
        with app.app_context():
            from course import tokens

            pixel = [f"/o/{tokens.make('open', {'d': i})}.gif" for i in ids]
            # As lesson emails carry them: the lesson's signed target, the recipient's token.
            link = tokens.make("link", {"l": "bench", "u": "https://example.org/x"})
            click = [f"/c/{link}/{tokens.make('click', {'d': i, 'l': 'bench'})}" for i in ids]
        scripts = {"healthz": wrk_script(["/healthz"], tmp, "healthz"),
                   "pixel": wrk_script(pixel, tmp, "pixel"),
                   "click": wrk_script(click, tmp, "click")}
        full_env = {**os.environ, **env, "PYTHONPATH": str(procs.ROOT)}
        results: dict[str, dict[str, Run]] = {}
        tracked = 0
        setups = [("as deployed (fast path, Redis over TCP)", {}),
                  ("Flask views only (TRACKING_FAST_PATH=0)", {"TRACKING_FAST_PATH": "0"})]
        if args.unix_socket:
            setups.append(("fast path, Redis over a unix socket", {"REDIS_URL": unix_url}))
        for setup, extra_env in setups:
            log(f"{setup}: {args.workers} x {args.worker_class} gunicorn workers")
            server, base = start_gunicorn(args, {**full_env, **extra_env}, logfile)
            try:
                results[setup], n = measure(args, base, scripts, CpuMeter(server))
                tracked += n
            finally:
                procs.stop([server])
        buffered = int(conn.llen(tracking_buffer.INBOX))
        stored, flush_seconds = flush_all(app)
        with engine.connect() as c:
            events = c.execute(sa.text("SELECT count(*) FROM event")).scalar_one()
            counted = c.execute(sa.text(
                "SELECT coalesce(sum(open_count + click_count), 0) FROM delivery")).scalar_one()
        fallback = None
        if args.fallback:
            dead = f"redis://127.0.0.1:{procs.free_port()}/0"
            server, base = start_gunicorn(args, {**full_env, "REDIS_URL": dead}, logfile)
            try:
                wrk(base, scripts["pixel"], 2, args.connections, "pixel")
                fallback = wrk(base, scripts["pixel"], args.duration, args.connections,
                               "pixel, Redis down", CpuMeter(server))
            finally:
                procs.stop([server])
        with app.app_context():
            db.engine.dispose()
        print(report(args, results, fallback, buffered, stored, flush_seconds, events,
                     counted, tracked, {**machine(), "load_before": load_before}), flush=True)
    return 0


def report(args: argparse.Namespace, results: dict[str, dict[str, Run]], fallback: Run | None,
           buffered: int, stored: int, flush_seconds: float, events: int, counted: int,
           tracked: int, info: dict[str, str]) -> str:
    # wrk counts answered requests; a few more may have been in flight when it stopped.
    runs = args.rounds + 1
    whole = tracked <= events <= tracked + 2 * args.connections * runs * len(results)
    lines = [
        "Minicourse tracking benchmark",
        f"machine: {info['cpu']}, {info['cores']}, {info['ram']} RAM",
        f"load average (1, 5, 15 min) before: {info['load_before']}, after: {info['load']}",
        f"gunicorn: {args.workers} x {args.worker_class} workers"
        + (f", {args.threads} threads" if args.threads > 1 else "")
        + f"; wrk: 1 thread, {args.connections} connections, {args.duration} s x "
          f"{args.rounds} rounds (median); PostgreSQL; a private redis-server",
    ]
    verdicts = []
    for setup, runs_ in results.items():
        healthz = runs_["healthz"].rate
        lines += ["", setup,
                  f"  {'endpoint':<20}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'vs /healthz':>13}{'errors':>8}{'CPU us/req':>12}"]
        extra = [fallback] if fallback and setup == next(iter(results)) else []
        for run in [*runs_.values(), *extra]:
            lines.append(f"  {run.name:<20}{run.rate:>10,.0f}{run.p50_ms:>9.2f}"
                         f"{run.p99_ms:>9.2f}{run.rate / healthz:>13.2f}{run.errors:>8}"
                         f"{run.cpu_us:>12.0f}")
        px = runs_["pixel"]
        ok = (px.rate >= TARGET_RATE, px.p99_ms < TARGET_P99_MS,
              px.rate / healthz >= TARGET_RATIO)
        verdicts.append(
            f"  {setup}: >= {TARGET_RATE:,.0f}/s {'PASS' if ok[0] else 'FAIL'}, "
            f"p99 < {TARGET_P99_MS:.0f} ms {'PASS' if ok[1] else 'FAIL'}, "
            f"ratio >= {TARGET_RATIO} {'PASS' if ok[2] else 'FAIL'}")
    lines += [
        "",
        "CPU us/req: gunicorn's workers (user + system) per answered request; steadier than "
        "requests/s on a shared machine",
        "targets for the pixel:", *verdicts,
        f"flush: {stored:,} hits stored in {flush_seconds:.2f} s "
        f"({stored / flush_seconds if flush_seconds else 0:,.0f} events/s into PostgreSQL); "
        f"{buffered:,} were waiting in Redis after the runs",
        f"no hit lost or doubled: {'yes' if whole and events == counted else 'NO'} "
        f"(wrk got answers to {tracked:,} pixel and click requests, warm-ups included; "
        f"{events:,} events stored; {counted:,} hits counted on deliveries)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
