"""The chaos scenario: a whole course through real workers while everything around them fails.

Shared by ``tests/test_chaos.py`` (2,000 subscribers) and ``bench/chaos.py`` (20,000).
Subscribers go through every lesson on real RQ worker processes, SIGKILLed at random
moments (work horse included), with Redis flushed once mid-run, ticks duplicated (twice
in a row, or two at once from two threads) and the local SendGrid server answering 429,
5xx, late (past the client's timeout) or not at all, dropping connections before the
body is read, after reading it and after accepting it, going fully down for a while and
answering one 429 with a long ``Retry-After``. It posts its Event Webhook events to the
app, signed, late, in batches and some twice (``tests/sendgrid_webhook.py``), and those
settle the unconfirmed lessons. Then the provider calms down, and every lesson is
counted from the ledger of what it accepted and the database: ``duplicates`` (accepted
twice), ``lost`` (never accepted and not queued) and ``unresolved`` (still unconfirmed).

The course advances because the driver *plays time forward*: after each tick it pulls
every pending ``next_send_at`` in to now. Workers are separate processes, so the clock is
not frozen or moved; the scheduling times themselves are tested in test_schedule.py, and
this scenario is only about the pipeline surviving failures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import psutil
from flask import Flask
from redis import Redis
from sqlalchemy import func, insert, select, update
from werkzeug.serving import WSGIRequestHandler, make_server

from course import pipeline
from course.content import current_course
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Status, Subscriber
from course.queue import MAIL_QUEUE
from course.timeutil import utcnow
from tests.sendgrid_server import Action, SendGridServer, _Handler
from tests.sendgrid_webhook import EventPoster, new_key

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "SG.chaos-key"
ZONES = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata")
BACKOFF_BASE = 0.5  # SendGridBackend's default backoff_base
SWEPT = "the worker stopped while sending"  # unconfirmed.sweep_stale_sending's error text
NO_ANSWER = "no answer from SendGrid"  # UnknownOutcomeError's, from the SendGrid backend


@dataclass
class ChaosSettings:
    subscribers: int = 2000
    workers: int = 3
    job_size: int = 100  # deliveries per send job (the tick's own batches go up to 1,000)
    p429: float = 0.1
    p5xx: float = 0.1
    ptimeout: float = 0.04
    pdrop: float = 0.02  # after the body was read: accepted or not, at even odds
    pdrop_early: float = 0.02  # before the body was read
    sendgrid_timeout: float = 1.0
    sendgrid_max_retries: int = 2
    reset_in: float = 0.5  # a 429's X-RateLimit-Reset is now + this
    # Longer than jobs wait in the queue on a busy 2-core machine: at 2 s every tick enqueued
    # every waiting delivery again (540 jobs for 200 batches: claims made the copies no-ops,
    # but each cost a work horse, and the run took twice as long).
    requeue_after: int = 4
    job_margin: float = 8.0  # claim, render and write-back on a busy 2-core machine
    # Kills and the flush come at random points of progress (the fraction of all lessons
    # settled), so a fast machine sees as many as a slow one.
    kills: int = 5
    flush_at: tuple[float, float] = (0.3, 0.5)
    calm_at: float = 0.75  # the provider calms down (after the last kill)
    outage_at: float = 0.4  # every request answered 503 for outage_seconds
    outage_seconds: float = 5.0
    retry_after_at: float = 0.55  # one 429 with this Retry-After
    retry_after: int = 3
    unconfirmed_window: int = 4  # UNCONFIRMED_WINDOW_SECONDS
    webhook_public_key: str = ""  # set by run_chaos
    tick_every: float = 0.4
    deadline: float = 150.0
    seed: int | None = None

    @property
    def stale_seconds(self) -> int:
        """Longer than one send job can last, so only a dead worker leaves work ``sending``.

        Every attempt ends within the client timeout (a read timeout ends the job as
        unknown); between attempts the backend waits at most a 429's reset (rounded up to
        the next whole second by ``X-RateLimit-Reset``) or its jittered backoff.
        """
        waits = sum(max(self.reset_in + 1, BACKOFF_BASE * 2 ** (a - 1))
                    for a in range(1, self.sendgrid_max_retries + 1))
        attempts = (self.sendgrid_max_retries + 1) * self.sendgrid_timeout
        return math.ceil(attempts + waits + self.job_margin)

    def app_overrides(self, sendgrid_url: str) -> dict[str, Any]:
        return {
            "MAIL_BACKEND": "sendgrid", "SENDGRID_API_KEY": API_KEY,
            "SENDGRID_API_HOST": sendgrid_url, "SENDGRID_TIMEOUT": self.sendgrid_timeout,
            "SENDGRID_MAX_RETRIES": self.sendgrid_max_retries,
            "REQUEUE_AFTER_SECONDS": self.requeue_after,
            "SENDING_STALE_SECONDS": self.stale_seconds,
            # RQ stops a job this long before it could be taken for a dead one.
            "SEND_JOB_TIMEOUT": max(1, self.stale_seconds - 4),
            "UNCONFIRMED_WINDOW_SECONDS": self.unconfirmed_window,
            "SEND_BACKOFF_SECONDS": 0.2, "SEND_BACKOFF_MAX_SECONDS": 2.0,
            "SENDGRID_WEBHOOK_PUBLIC_KEY": self.webhook_public_key,
        }


class ChaosServer(SendGridServer):
    """The local SendGrid server, also noting which requests got no answer in time.

    A "timeout" is accepted and answered after the client gave up; a drop closes the
    connection, accepted or not; and on a loaded machine even a normal answer can come
    later than ``late_after``. Their delivery ids bound the ``unknown`` outcomes.
    """

    def __init__(self, *, late_after: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.late_after = late_after
        self._httpd.RequestHandlerClass = _ChaosHandler
        self._current = threading.local()  # the handler thread's request: action, ids
        self._notes = threading.Lock()
        self.unanswered: set[int] = set()
        self.outcomes: Counter[str] = Counter()
        self.poster: EventPoster | None = None

    def _next_action(self) -> Action | None:
        action = super()._next_action()
        self._current.action, self._current.ids = action, set()
        kind = ("ok" if action is None or action == Action() else
                "429" if action.status == 429 else "5xx" if action.status else
                "timeout" if action.delay else "drop before body" if action.before_body else
                "drop after accepting" if action.accepted else "drop after reading")
        with self._notes:
            self.outcomes[kind] += 1
        return action

    def _entries(self, body: dict[str, Any], message_id: str) -> list[Any]:
        action: Action | None = getattr(self._current, "action", None)
        ids = {int((p.get("custom_args") or {}).get("delivery_id", 0))
               for p in body["personalizations"]}
        self._current.ids = ids
        if action is not None and (action.delay or action.drop):
            self.note_unanswered(ids)
        return super()._entries(body, message_id)

    def note_unanswered(self, ids: set[int], late: bool = False) -> None:
        with self._notes:
            self.unanswered |= ids
            if late:
                self.outcomes["late"] += 1

    def report(self) -> dict[str, Any]:
        """What the driver needs, as JSON: one row per accepted recipient, and the notes."""
        with self._notes:
            unanswered, outcomes = sorted(self.unanswered), dict(self.outcomes)
        rows = [(int(e.custom_args.get("delivery_id", 0)), e.email, e.subject, e.message_id)
                for e in self.ledger]
        poster = self.poster
        events = ({"posted": poster.posted, "repeated": poster.repeated,
                   "failed posts": poster.failures, "waiting": len(poster.pending)}
                  if poster else {})
        return {"ledger": rows, "unanswered": unanswered, "outcomes": outcomes,
                "events": events}


class _ChaosHandler(_Handler):
    """Times each request from the moment its connection is handled, and takes the
    driver's orders (``POST /_chaos/config``, ``GET /_chaos/report``)."""

    def setup(self) -> None:
        self.started = time.monotonic()
        super().setup()

    def do_GET(self) -> None:
        sg = self.server.sg
        if self.path == "/_chaos/report" and isinstance(sg, ChaosServer):
            self._json(200, sg.report())
        else:
            super().do_GET()

    def do_POST(self) -> None:
        sg = self.server.sg
        assert isinstance(sg, ChaosServer)
        if self.path.startswith("/_chaos/"):
            data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/_chaos/config":
                sg.chaos(**data)
            elif self.path == "/_chaos/fail":
                sg.fail_next(**data)
            elif self.path == "/_chaos/drop":
                sg.drop_next(**data)
            elif self.path == "/_chaos/events" and sg.poster is None:
                sg.poster = EventPoster(sg.take_events, data["url"], data["key"],
                                        seed=data.get("seed")).start()
            self._json(200, {})
            return
        super().do_POST()
        action = getattr(sg._current, "action", None)
        if time.monotonic() - self.started > sg.late_after and (action is None
                                                                or not action.delay):
            sg.note_unanswered(getattr(sg._current, "ids", set()), late=True)


class ServerProcess:
    """The chaos server in a process of its own (``python -m tests.chaos_scenario``), so
    the driver's ticks never hold it up: a slow answer would be an unknown outcome."""

    def __init__(self, late_after: float):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos_scenario", "--late-after", str(late_after)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError("the chaos SendGrid server did not start")

    def _call(self, path: str, data: dict[str, Any] | None = None) -> Any:
        body = json.dumps(data).encode() if data is not None else None
        request = urllib.request.Request(self.url + path, data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def chaos(self, **settings: Any) -> None:
        self._call("/_chaos/config", settings)

    def fail_next(self, **settings: Any) -> None:
        self._call("/_chaos/fail", settings)

    def drop_next(self, **settings: Any) -> None:
        self._call("/_chaos/drop", settings)

    def post_events(self, url: str, key: str, seed: int) -> None:
        self._call("/_chaos/events", {"url": url, "key": key, "seed": seed})

    def report(self) -> dict[str, Any]:
        return dict(self._call("/_chaos/report"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The chaos SendGrid server.")
    parser.add_argument("--late-after", type=float, required=True)
    args = parser.parse_args(argv)
    server = ChaosServer(api_key=API_KEY, rate_limit=1_000_000, late_after=args.late_after,
                         events=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(server.url, flush=True)
    stop.wait()
    if server.poster is not None:
        server.poster.stop(flush=False, wait=2.0)
    server.stop()


class Workers:
    """Non-burst RQ worker processes, each in its own session so a kill takes no bystander."""

    def __init__(self, env: dict[str, str], logdir: Path, count: int):
        self.env, self.logdir = env, logdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.log_of: dict[int, Path] = {}
        self.deaths: list[str] = []  # how workers we did not kill ended: exit code, last line
        for _ in range(count):
            self.start_one()

    def start_one(self) -> None:
        n = len(self.logs)
        log = open(self.logdir / f"worker-{n}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.worker", "-l", "WARNING",
             "--name", f"chaos-{os.getpid()}-{n}"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.procs.append(proc)
        self.log_of[proc.pid] = Path(log.name)

    def replace_dead(self) -> int:
        """Workers that died on their own (not killed by us) are restarted; returns how many."""
        dead = [p for p in self.procs if p.poll() is not None]
        for p in dead:
            lines = self.log_of[p.pid].read_text(errors="replace").strip().splitlines()
            self.deaths.append(f"exit {p.returncode}: {lines[-1] if lines else ''}"[:300])
            self.procs.remove(p)
            self.start_one()
        return len(dead)

    def kill(self, rng: random.Random) -> bool:
        """SIGKILL a worker (a busy one if any) and all it forked; True if it was busy."""
        families = {p.pid: _family(p.pid) for p in self.procs}
        busy = [p for p in self.procs if any(_pgid(c.pid) == c.pid for c in families[p.pid])]
        proc = rng.choice(busy or self.procs)
        family = families[proc.pid]
        groups = {c.pid: _pgid(c.pid) for c in family}  # a work horse leads its own group
        proc.kill()
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()
        psutil.wait_procs(family, timeout=5)
        self.procs.remove(proc)
        self.start_one()
        return any(pgid == pid for pid, pgid in groups.items())

    def stop(self) -> None:
        """Warm shutdown (RQ finishes the job in hand), then SIGKILL what is left."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for child in _family(p.pid):
                    child.kill()
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()

    def log_tail(self, chars: int = 3000) -> str:
        text = "".join(f"--- {Path(log.name).name}\n"
                       + Path(log.name).read_text(errors="replace")[-chars // 4:]
                       for log in self.logs[-4:])
        return text[-chars:]


def _family(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def worker_env(app: Flask, settings: ChaosSettings, workdir: Path) -> dict[str, str]:
    cfg = app.config
    env = dict(os.environ)
    env.update({k: str(v) for k, v in settings.app_overrides(cfg["SENDGRID_API_HOST"]).items()})
    env.update(
        DATABASE_URL=str(cfg["SQLALCHEMY_DATABASE_URI"]), REDIS_URL=cfg["REDIS_URL"],
        SECRET_KEY=cfg["SECRET_KEY"], MAIL_FROM=cfg["MAIL_FROM"], BASE_URL=cfg["BASE_URL"],
        MINICOURSE_INSTANCE=str(workdir / "instance"), PYTHONPATH=str(ROOT),
    )
    return env


def seed_subscribers(app: Flask, count: int) -> None:
    """Active subscribers due now, in one bulk INSERT per chunk."""
    now = utcnow()
    rows = [dict(email=f"chaos{i}@example.com", name=f"Reader {i}" if i % 3 else "",
                 timezone=ZONES[i % len(ZONES)], status=Status.ACTIVE, next_position=1,
                 next_send_at=now, consent_at=now, consent_ip="127.0.0.1",
                 consent_user_agent="chaos", consent_version="chaos", confirmed_at=now,
                 created_at=now, updated_at=now)
            for i in range(count)]
    with app.app_context():
        for start in range(0, count, 5000):
            db.session.execute(insert(Subscriber), rows[start:start + 5000])
        db.session.commit()


def run_chaos(make_app: Callable[..., Flask], settings: ChaosSettings, workdir: Path,
              say: Callable[[str], None] = print) -> ChaosReport:
    """Run the scenario on the database ``make_app(**overrides)`` builds an app for."""
    seed = settings.seed if settings.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    private_pem, public_key = new_key()
    settings = replace(settings, webhook_public_key=public_key)
    server = ServerProcess(late_after=settings.sendgrid_timeout * 0.9)
    workers: Workers | None = None
    web: Any = None
    try:
        app = make_app(**settings.app_overrides(server.url))
        # The app's own webhook endpoint, where the server posts its events.
        web = make_server("127.0.0.1", 0, app, threaded=True,
                          request_handler=_QuietHandler)
        threading.Thread(target=web.serve_forever, daemon=True).start()
        server.post_events(f"http://127.0.0.1:{web.server_port}/webhooks/sendgrid",
                           private_pem, seed)
        with app.app_context():
            lessons = len(current_course().lessons)
        report = ChaosReport(subscribers=settings.subscribers, lessons=lessons, seed=seed,
                             backend=app.config["SQLALCHEMY_DATABASE_URI"].split(":")[0],
                             stale_seconds=settings.stale_seconds)
        seed_subscribers(app, settings.subscribers)
        server.chaos(**_faults(settings, seed))
        # The random faults may miss a kind in a short run: the first requests meet one
        # drop of each kind for certain (before the body, after reading it, after accepting).
        for before_body, accepted in ((True, False), (False, False), (False, True)):
            server.drop_next(accepted=accepted, before_body=before_body)
        (workdir / "instance").mkdir(parents=True, exist_ok=True)
        workers = Workers(worker_env(app, settings, workdir), workdir, settings.workers)
        _drive(app, settings, server, workers, rng, report, say)
        workers.stop()  # nothing in flight while the ledger is read
        seen = server.report()
    finally:
        if workers is not None:
            workers.stop()
            report.worker_deaths = list(workers.deaths)
        server.stop()
        if web is not None:
            web.shutdown()
    report.ledger = [LedgerRow(*row) for row in seen["ledger"]]
    report.outcomes = Counter(seen["outcomes"])
    report.unanswered = set(seen["unanswered"])
    report.events = dict(seen.get("events") or {})
    with app.app_context():
        report.deliveries = [DeliveryRow(*r) for r in db.session.execute(
            select(Delivery.id, Delivery.subscriber_id, Subscriber.email, Delivery.position,
                   Delivery.status, Delivery.error, Delivery.provider_message_id)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id))]
        report.subscriber_states = Counter(dict(db.session.execute(
            select(Subscriber.status, func.count()).group_by(Subscriber.status)).all()))
        in_flight = select(Delivery.id).where(
            Delivery.subscriber_id == Subscriber.id,
            Delivery.status.in_([DeliveryStatus.QUEUED, DeliveryStatus.SENDING]))
        report.stranded = [tuple(r) for r in db.session.execute(
            select(Subscriber.id, Subscriber.next_position).where(
                Subscriber.status == Status.ACTIVE, Subscriber.next_send_at.is_(None),
                ~in_flight.exists()))]
        db.session.remove()
    if report.problems():
        report.worker_logs = workers.log_tail() if workers else ""
    return report


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # thousands of webhook posts: the summary counts them


def _faults(settings: ChaosSettings, seed: int) -> dict[str, Any]:
    return dict(p429=settings.p429, p5xx=settings.p5xx, ptimeout=settings.ptimeout,
                pdrop=settings.pdrop, pdrop_early=settings.pdrop_early,
                timeout_delay=settings.sendgrid_timeout + 0.5, reset_in=settings.reset_in,
                seed=seed)


def _drive(app: Flask, settings: ChaosSettings, server: ServerProcess, workers: Workers,
           rng: random.Random, report: ChaosReport, say: Callable[[str], None]) -> None:
    total = settings.subscribers * report.lessons
    kill_at = sorted(rng.uniform(0.05, settings.calm_at - 0.05) for _ in range(settings.kills))
    flush_at = rng.uniform(*settings.flush_at)
    t0 = time.monotonic()
    next_say = t0
    calm = False
    outage_until: float | None = None
    while True:
        now = time.monotonic()
        report.duration = now - t0
        if report.duration > settings.deadline:
            report.timed_out = True
            return
        workers.replace_dead()
        _tick_round(app, settings, rng, report)
        with app.app_context():
            _pull_forward()
            states = dict(db.session.execute(
                select(Delivery.status, func.count()).group_by(Delivery.status)).all())
            active = db.session.scalar(select(func.count()).where(
                Subscriber.status == Status.ACTIVE)) or 0
            db.session.remove()
        settled = states.get(DeliveryStatus.SENT, 0) + states.get(DeliveryStatus.UNCONFIRMED, 0)
        in_flight = states.get(DeliveryStatus.QUEUED, 0) + states.get(DeliveryStatus.SENDING, 0)
        if active == 0 and in_flight == 0 and not states.get(DeliveryStatus.UNCONFIRMED):
            if report.calm_after is not None:
                report.settle_seconds = report.duration - report.calm_after
            return
        if now >= next_say:
            jobs = Redis.from_url(app.config["REDIS_URL"]).llen(f"rq:queue:{MAIL_QUEUE}")
            say(f"chaos {report.duration:5.1f}s: {settled}/{total} settled, {states}, "
                f"{report.kills} kills, {jobs} jobs waiting")
            next_say = now + 5
        if calm:
            time.sleep(settings.tick_every)
            continue
        progress = settled / total
        if outage_until is None and progress >= settings.outage_at:
            server.chaos(p5xx=1.0, seed=report.seed)
            outage_until = now + settings.outage_seconds
            report.outage = settings.outage_seconds
            say(f"chaos {report.duration:5.1f}s: the provider is down "
                f"({settings.outage_seconds:.0f} s)")
        elif outage_until is not None and outage_until > 0 and now >= outage_until:
            server.chaos(**_faults(settings, report.seed))
            outage_until = 0.0
            say(f"chaos {report.duration:5.1f}s: the provider is back")
        if not report.long_retry_after and outage_until == 0.0 and \
                progress >= settings.retry_after_at:
            server.fail_next(status=429, retry_after=settings.retry_after)
            report.long_retry_after = settings.retry_after
            say(f"chaos {report.duration:5.1f}s: a 429 with Retry-After: "
                f"{settings.retry_after}")
        if not report.flushes and progress >= flush_at:
            Redis.from_url(app.config["REDIS_URL"]).flushdb()
            report.flushes += 1
            say(f"chaos {report.duration:5.1f}s: Redis flushed")
        if report.kills < len(kill_at) and progress >= kill_at[report.kills]:
            _kill(app, workers, rng, report)
        if progress >= settings.calm_at and report.kills == len(kill_at) and \
                outage_until == 0.0 and report.long_retry_after:
            server.chaos()
            calm = True
            report.calm_after = report.duration
            say(f"chaos {report.duration:5.1f}s: provider calm, no more kills")
        time.sleep(settings.tick_every)


def _sending_ids() -> set[int]:
    return set(db.session.scalars(select(Delivery.id).where(
        Delivery.status == DeliveryStatus.SENDING)))


def _kill(app: Flask, workers: Workers, rng: random.Random, report: ChaosReport) -> None:
    """Kill a worker, bounding what it may leave unknown: what was ``sending`` before the
    kill, and after it (a claim between the first look and the kill shows up then)."""
    with app.app_context():
        before = _sending_ids()
        db.session.remove()
    busy = workers.kill(rng)
    with app.app_context():
        after = _sending_ids()
        db.session.remove()
    report.kills += 1
    report.kills_mid_job += busy
    report.in_flight_at_kills |= before | after


def _tick(app: Flask, enqueue: Callable[[list[int]], None], report: ChaosReport) -> None:
    try:
        with app.app_context():
            pipeline.tick(enqueue=enqueue)
            db.session.remove()
    except Exception as exc:  # noqa: BLE001 (a failing tick is a finding, not a crash)
        report.tick_errors.append(f"{type(exc).__name__}: {exc}"[:300])


def _tick_round(app: Flask, settings: ChaosSettings, rng: random.Random,
                report: ChaosReport) -> None:
    """One tick, or a duplicate: two in a row, or two at once from two threads."""

    def enqueue(ids: list[int]) -> None:
        for start in range(0, len(ids), settings.job_size):
            pipeline.enqueue_send(ids[start:start + settings.job_size])
            report.jobs_enqueued += 1
        report.deliveries_enqueued += len(ids)

    roll = rng.random()
    if roll < 0.6:
        _tick(app, enqueue, report)
        report.ticks["single"] += 1
    elif roll < 0.8:
        _tick(app, enqueue, report)
        _tick(app, enqueue, report)
        report.ticks["twice in a row"] += 1
    else:
        barrier = threading.Barrier(2)

        def racer() -> None:
            barrier.wait()
            _tick(app, enqueue, report)

        threads = [threading.Thread(target=racer) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report.ticks["two at once"] += 1


def _pull_forward() -> None:
    """Play time forward: whatever lesson is scheduled is due now."""
    db.session.execute(
        update(Subscriber)
        .where(Subscriber.status == Status.ACTIVE, Subscriber.next_send_at.is_not(None))
        .values(next_send_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


@dataclass(frozen=True)
class LedgerRow:
    """One recipient of one request the provider accepted."""

    delivery_id: int
    email: str
    subject: str
    message_id: str


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    subscriber_id: int
    email: str
    position: int
    status: str
    error: str
    message_id: str


@dataclass
class ChaosReport:
    """What happened, what the provider accepted and what the database says, and the checks."""

    subscribers: int
    lessons: int
    seed: int
    backend: str
    stale_seconds: int
    duration: float = 0.0
    timed_out: bool = False
    calm_after: float | None = None  # the last fault: after it the provider behaves
    settle_seconds: float | None = None  # from the last fault until every lesson settled
    outage: float = 0.0  # seconds the provider was fully down
    long_retry_after: int = 0  # the Retry-After of the one long 429
    kills: int = 0
    kills_mid_job: int = 0
    jobs_enqueued: int = 0
    deliveries_enqueued: int = 0  # more than deliveries: re-enqueued after a flush or a retry
    flushes: int = 0
    worker_deaths: list[str] = field(default_factory=list)  # exits we did not cause
    ticks: Counter[str] = field(default_factory=Counter)
    tick_errors: list[str] = field(default_factory=list)
    in_flight_at_kills: set[int] = field(default_factory=set)
    unanswered: set[int] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    events: dict[str, int] = field(default_factory=dict)  # what the event poster did
    ledger: list[LedgerRow] = field(default_factory=list)
    deliveries: list[DeliveryRow] = field(default_factory=list)
    subscriber_states: Counter[str] = field(default_factory=Counter)
    # Active, nothing due and nothing in flight: nobody will ever send them anything again.
    stranded: list[tuple[int, int]] = field(default_factory=list)  # (subscriber, position)
    worker_logs: str = ""

    # -- every lesson counted, from the ledger and the database ---------------------------

    def duplicates(self) -> list[str]:
        """Lessons the provider accepted more than once: the same address and subject
        (which a delivery id accepted twice is too), one line per lesson."""
        per_lesson = Counter((e.email.lower(), e.subject) for e in self.ledger)
        ids: dict[tuple[str, str], set[int]] = {}
        for e in self.ledger:
            ids.setdefault((e.email.lower(), e.subject), set()).add(e.delivery_id)
        errors = {d.id: f"{d.status}, {d.error[:80]!r}" for d in self.deliveries}
        return [f"{k[0]} / {k[1]!r}: {n} times (deliveries "
                f"{[(i, errors.get(i, '?')) for i in sorted(ids[k])]})"
                for k, n in per_lesson.items() if n > 1]

    def lost(self) -> list[str]:
        """Lessons never accepted and not queued: whatever the database says of them (sent,
        failed, cancelled), and lessons never created for a subscriber."""
        accepted = {e.delivery_id for e in self.ledger}
        waiting = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.UNCONFIRMED)
        out = [f"delivery {d.id} ({d.status})" for d in self.deliveries
               if d.id not in accepted and d.status not in waiting]
        positions: dict[int, set[int]] = {}
        for d in self.deliveries:
            positions.setdefault(d.subscriber_id, set()).add(d.position)
        full = set(range(1, self.lessons + 1))
        out += [f"subscriber {s}: lessons {sorted(full - p)} never created"
                for s, p in positions.items() if p != full]
        missing = self.subscribers - len(positions)
        if missing > 0:
            out.append(f"{missing} subscribers have no delivery at all")
        return out

    def unresolved(self) -> list[str]:
        """Lessons still unconfirmed at the end."""
        return [f"delivery {d.id}" for d in self.deliveries
                if d.status == DeliveryStatus.UNCONFIRMED]

    def problems(self) -> list[str]:
        """Every broken promise, in words; empty when the run kept them all."""
        out: list[str] = []
        if self.timed_out:
            out.append(f"not finished within the deadline ({self.duration:.0f} s)")
        by_id = {d.id: d for d in self.deliveries}
        ledger_ids = {e.delivery_id: e for e in self.ledger}
        out += _some("duplicates (accepted more than once)", self.duplicates())
        out += _some("lost (never accepted and not queued)", self.lost())
        out += _some("unresolved (still unconfirmed at the end)", self.unresolved())
        out += _some("accepted by the provider but not in the database",
                     (str(i) for i in ledger_ids if i not in by_id))
        out += _some("accepted for another address than the delivery's",
                     (str(i) for i, e in ledger_ids.items()
                      if i in by_id and e.email.lower() != by_id[i].email.lower()))
        sent = [d for d in self.deliveries if d.status == DeliveryStatus.SENT]
        out += _some("sent, with another provider message id than the request that took it",
                     (str(d.id) for d in sent if d.id in ledger_ids and d.message_id
                      and ledger_ids[d.id].message_id != d.message_id))
        out += _some("accepted by the provider, not sent in the database (id: status)",
                     (f"{i}: {by_id[i].status}" for i in ledger_ids
                      if i in by_id and by_id[i].status != DeliveryStatus.SENT))
        stuck = Counter(d.status for d in self.deliveries if d.status in (
            DeliveryStatus.QUEUED, DeliveryStatus.SENDING))
        if stuck:
            out.append(f"deliveries not sent at the end: {dict(stuck)}")
        if set(self.subscriber_states) - {Status.FINISHED}:
            out.append(f"subscribers not finished: {dict(self.subscriber_states)}")
        out += _some("stranded subscribers: active, nothing due, nothing in flight "
                     "(id: next lesson)", (f"{i}: {p}" for i, p in self.stranded))
        return out

    def summary(self) -> str:
        states = Counter(d.status for d in self.deliveries)
        calm = f"{self.calm_after:.1f} s" if self.calm_after is not None else "never"
        settle = (f"{self.settle_seconds:.1f} s" if self.settle_seconds is not None
                  else "not settled")
        return "\n".join([
            f"chaos run on {self.backend}: {self.subscribers} subscribers x {self.lessons} "
            f"lessons, seed {self.seed}, {self.duration:.1f} s"
            + (" (TIMED OUT)" if self.timed_out else ""),
            f"  lessons sent: {states[DeliveryStatus.SENT]}, ledger entries: {len(self.ledger)}",
            f"  bounds: {len(self.in_flight_at_kills)} in flight at kills, "
            f"{len(self.unanswered)} in unanswered requests",
            f"  kills: {self.kills} ({self.kills_mid_job} mid-job), unexpected worker exits: "
            f"{len(self.worker_deaths)}, Redis flushes: {self.flushes}, stale after "
            f"{self.stale_seconds} s",
            f"  ticks: {dict(self.ticks)}, tick errors: {len(self.tick_errors)}; "
            f"{self.deliveries_enqueued} deliveries enqueued in {self.jobs_enqueued} jobs",
            f"  provider answers: {dict(self.outcomes)}; full outage {self.outage:.0f} s; "
            f"a 429 with Retry-After: {self.long_retry_after}",
            f"  events posted to the webhook: {self.events}",
            f"  last fault at {calm}; everything settled {settle} after it",
            f"  deliveries: {dict(states)}; subscribers: {dict(self.subscriber_states)}",
        ] + [f"  tick error: {e}" for e in Counter(self.tick_errors)]
          + [f"  worker exit: {e}" for e in Counter(self.worker_deaths)])

    def counts(self) -> str:
        """The three figures, one per line: what ``bench/chaos.py`` ends with."""
        return "\n".join([f"duplicates: {len(self.duplicates())}",
                          f"lost: {len(self.lost())}",
                          f"unresolved: {len(self.unresolved())}"])


def _some(what: str, items: Iterable[str], limit: int = 10) -> list[str]:
    found = list(items)
    if not found:
        return []
    more = f" ... and {len(found) - limit} more" if len(found) > limit else ""
    return [f"{len(found)} {what}: {', '.join(found[:limit])}{more}"]


if __name__ == "__main__":
    serve()
