"""SendGrid Event Webhook benchmark: one signed POST of 10,000 events, timed end to end.

``python -m bench.webhook`` makes a fresh, migrated PostgreSQL database with real lesson
deliveries, a real P-256 key pair, and starts gunicorn (``wsgi:app``) on a free port with
the public key configured. It then POSTs a signed batch of 10,000 events (a realistic
mix: processed, delivered, opens with Apple's machine opens, clicks, deferrals, a few
bounces, blocks, drops, spam reports and unsubscribes) and times request to response;
then the same batch again with new ``sg_event_id`` values (SendGrid's retry: nothing
may change), then a second fresh batch. It checks the database afterwards and prints the
figures with the machine they were measured on.

Target: a 10,000-event POST answered in under 2 seconds.

    python -m bench.webhook [--events 10000] [--deliveries 2500] [--keep-db]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench import procs, seed
from bench.host import machine
from bench.procs import log

SECRET_KEY = "bench-secret-key-that-is-long-enough-for-production-checks"
TARGET_SECONDS = 2.0
# (event, extra fields, weight) for the events after "processed" and "delivered".
MIX: list[tuple[str, dict[str, Any], int]] = [
    ("open", {"sg_machine_open": True, "useragent": "Mozilla/5.0"}, 30),
    ("open", {"sg_machine_open": False, "useragent": "Mozilla/5.0 (Macintosh)"}, 25),
    ("click", {"url": "https://example.org/guide", "useragent": "Mozilla/5.0"}, 20),
    ("deferred", {"response": "451 try again later", "attempt": "1"}, 10),
    ("bounce", {"type": "bounce", "reason": "550 5.1.1 user unknown"}, 3),
    ("bounce", {"type": "blocked", "reason": "554 blocked by policy"}, 2),
    ("dropped", {"reason": "Bounced Address"}, 2),
    ("spamreport", {}, 1),
    ("unsubscribe", {}, 2),
    ("group_unsubscribe", {"asm_group_id": 1}, 1),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.webhook",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--deliveries", type=int, default=2_500)
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--keep-db", action="store_true", help="leave the database for inspection")
    p.add_argument("--pg-admin-url", default=os.environ.get("TEST_POSTGRES_ADMIN_URL")
                   or seed.PG_ADMIN_URL)
    return p.parse_args(argv)


def seed_deliveries(engine: sa.Engine, count: int, slug: str) -> list[tuple[int, str]]:
    """``count`` active subscribers, each with lesson 1 sent; returns (delivery id, email)."""
    with engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO subscriber (email, name, timezone, status, consent_at, consent_ip,
                consent_user_agent, consent_version, confirmed_at, next_position,
                next_send_at, created_at, updated_at)
            SELECT 'reader' || g || '@bench.example.org', 'Reader ' || g, 'UTC', 'active',
                   now() - interval '30 days', '192.0.2.1', 'bench', 'v1',
                   now() - interval '30 days', 2, now() + interval '2 days',
                   now() - interval '30 days', now()
            FROM generate_series(1, :count) AS g"""), {"count": count})
        conn.execute(sa.text("""
            INSERT INTO delivery (subscriber_id, lesson_slug, position, content_hash, status,
                attempts, error, provider_message_id, scheduled_at, sent_at, open_count,
                click_count, created_at)
            SELECT id, :slug, 1, '', 'sent', 1, '', 'bench-msg', now(), now(), 0, 0, now()
            FROM subscriber"""), {"slug": slug})
        rows = conn.execute(sa.text(
            "SELECT d.id, s.email FROM delivery d JOIN subscriber s ON s.id = d.subscriber_id"
            " ORDER BY d.id")).all()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE subscriber, delivery"))
    return [(r[0], r[1]) for r in rows]


def build_events(deliveries: list[tuple[int, str]], total: int, start: int,
                 rng: random.Random) -> list[dict[str, Any]]:
    """processed + delivered for each delivery, then the mix until ``total`` events."""
    kinds = [m for m in MIX for _ in range(m[2])]
    events: list[dict[str, Any]] = []
    step = 0
    while len(events) < total:
        for delivery_id, email in deliveries:
            if len(events) >= total:
                break
            if step == 0:
                name, extra = "processed", {}
            elif step == 1:
                name, extra = "delivered", {"response": "250 OK"}
            else:
                name, extra, _ = rng.choice(kinds)
            events.append({"email": email, "timestamp": start + step, "event": name,
                           "sg_event_id": uuid.uuid4().hex,
                           "sg_message_id": f"bench-msg.filter0001.{delivery_id}.0",
                           "smtp-id": "<bench-msg@bench>", "category": ["lesson"],
                           "delivery_id": str(delivery_id), **extra})
        step += 1
    return events


def signed_post(port: int, key: ec.EllipticCurvePrivateKey, body: bytes) -> tuple[float, int,
                                                                                     Any]:
    """POST the body as SendGrid would; returns (seconds, status, JSON answer)."""
    timestamp = str(int(time.time()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    headers = {"Content-Type": "application/json",
               "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
               "X-Twilio-Email-Event-Webhook-Timestamp": timestamp}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    conn.request("POST", "/webhooks/sendgrid", body=body, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = payload[:200]
    return elapsed, response.status, answer


def start_gunicorn(workers: int, env: dict[str, str],
                   logfile: IO[bytes]) -> tuple[Any, int]:
    port = procs.free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--timeout", "120", "wsgi:app"]
    server, _ = procs.start_processes(argv, 1, env, logfile, "gunicorn")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server[0].poll() is not None:
            raise RuntimeError("gunicorn exited while starting (see its log)")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/webhooks/sendgrid")
            conn.getresponse().read()
            conn.close()
            return server[0], port
        except OSError:
            time.sleep(0.1)
    procs.stop(server)
    raise RuntimeError("gunicorn did not start within 60 s")



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(20240607)
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mc-bench-wh-")))
        logfile = stack.enter_context(open(tmp / "gunicorn.log", "wb"))
        db_name, db_url = seed.throwaway_database(stack, args.pg_admin_url, args.keep_db)
        env = dict(DATABASE_URL=db_url, SECRET_KEY=SECRET_KEY, MINICOURSE_ENV="development",
                   MAIL_BACKEND="outbox", MAIL_FROM="course@bench.example.org",
                   BASE_URL="https://course.bench.example.org",
                   MINICOURSE_INSTANCE=str(tmp / "instance"), RATELIMIT_ENABLED="false",
                   REDIS_URL="redis://127.0.0.1:1/0",  # never used: no outgoing webhooks
                   SENDGRID_WEBHOOK_PUBLIC_KEY=public)
        log(f"database {db_name}: migrating")
        seed.migrate({"ENV": env})
        from course import create_app

        app = create_app({"ENV": env})
        with app.app_context():
            from course.content import current_course

            first_lesson = current_course().lesson_at(1)
            assert first_lesson is not None, "the course has no lessons"
            slug = first_lesson.slug
        engine = sa.create_engine(db_url, pool_size=1)
        stack.callback(engine.dispose)
        deliveries = seed_deliveries(engine, args.deliveries, slug)
        log(f"seeded {len(deliveries):,} subscribers with a sent lesson")
        server, port = start_gunicorn(args.workers, {**os.environ, **env,
                                                     "PYTHONPATH": str(procs.ROOT)}, logfile)
        stack.callback(procs.stop, [server])
        # Warm every worker (imports, key, connection pool) with small batches.
        for i in range(args.workers * 2):
            warm = build_events(deliveries[:1], 2, 1_600_000_000 + 10 * i, rng)
            signed_post(port, key, json.dumps(warm).encode())

        start = int(time.time()) - 3600
        first = build_events(deliveries, args.events, start, rng)
        body = json.dumps(first).encode()
        log(f"posting {len(first):,} events ({len(body) / 1e6:.1f} MB)")
        runs = [("fresh batch", *signed_post(port, key, body))]
        retried = [{**e, "sg_event_id": uuid.uuid4().hex} for e in first]
        runs.append(("replay, new sg_event_ids", *signed_post(port, key,
                                                               json.dumps(retried).encode())))
        second = build_events(deliveries, args.events, start + 100, rng)
        runs.append(("second fresh batch", *signed_post(port, key,
                                                         json.dumps(second).encode())))
        with engine.connect() as c:
            events = c.execute(sa.text("SELECT count(*) FROM event")).scalar_one()
            statuses: dict[str, int] = dict(c.execute(sa.text(
                "SELECT status, count(*) FROM subscriber GROUP BY status")).all())
            info = machine(engine)

    print(f"SendGrid webhook: {args.events:,} events per POST, {len(deliveries):,} deliveries, "
          f"body {len(body) / 1e6:.1f} MB, gunicorn {args.workers} sync workers, PostgreSQL")
    ok = True
    for name, seconds, status, answer in runs:
        print(f"  {name:<26} {seconds:6.3f} s  HTTP {status}  {answer}")
        ok = ok and status == 200
    fresh = [r for r in runs if "fresh" in r[0]]
    ok = ok and all(r[1] < TARGET_SECONDS for r in fresh) and runs[1][3].get("recorded") == 0
    print(f"  events in the database: {events:,}; subscribers by status: {statuses}")
    print(f"  target: every fresh batch < {TARGET_SECONDS:.0f} s, replay records nothing: "
          f"{'met' if ok else 'NOT met'}")
    for label, value in info.items():
        print(f"  {label}: {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
