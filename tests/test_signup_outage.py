"""With Redis down, a real web process still takes signups, logins and resends; once Redis
is back, the cron's owed-confirmations job handles the signups and sends what they were
promised."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import time_machine
from conftest import EMAIL, PASSWORD, SECRET, add_admin, run_jobs
from flask import Flask
from helpers import add_signup_request

from course import queue, tokens
from course.extensions import db
from course.models import SignupRequest, Status, Subscriber
from course.timeutil import utcnow

ROOT = Path(__file__).resolve().parent.parent
NO_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def web_without_redis(app: Flask, tmp_path: Path) -> Iterator[str]:
    """``gunicorn wsgi:app`` on the test database, its Redis unreachable, limits on."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"], REDIS_URL=NO_REDIS,
        SECRET_KEY=SECRET, MAIL_BACKEND="outbox", OUTBOX_DIR=str(tmp_path / "outbox"),
        MAIL_FROM="course@minicourse.test", BASE_URL=base, RATELIMIT_ENABLED="true",
        MINICOURSE_INSTANCE=str(tmp_path / "instance"), PYTHONPATH=str(ROOT),
    )
    env.pop("RATELIMIT_STORAGE_URI", None)
    log = tmp_path / "web.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--timeout", "30"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(base + "/", timeout=10).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the web process did not start:\n" + \
                log.read_text()
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    assert "Traceback" not in log.read_text(), log.read_text()


def form_post(session: requests.Session, page: str, url: str, **data: str) -> Any:
    token = CSRF_RE.search(session.get(page, timeout=10).text)
    assert token, "no CSRF token on " + page
    return session.post(url, data={"csrf_token": token.group(1), **data}, timeout=10,
                        allow_redirects=False)


@pytest.mark.slow
def test_without_redis_signups_are_saved_and_confirmed_once_redis_is_back(
    app: Flask, web_without_redis: str, outbox: list[Any]
) -> None:
    base = web_without_redis
    web = requests.Session()

    # A signup: the usual answer, and the row is in the database.
    res = form_post(web, base + "/", base + "/", email="ann@example.com", name="Ann",
                    consent="y")
    assert res.status_code == 200 and "Check your inbox" in res.text
    with app.app_context():
        [req] = db.session.scalars(db.select(SignupRequest))
        assert (req.email, req.state, req.queued_at, req.sent_at) == (
            "ann@example.com", "new", None, None)
    add_admin(app)

    # The admin can sign in: the login limit is counted in memory meanwhile.
    admin = requests.Session()
    assert admin.get(base + "/admin/login", timeout=10).status_code == 200
    wrong = form_post(admin, base + "/admin/login", base + "/admin/login", email=EMAIL,
                      password="not it")
    assert wrong.status_code in (200, 400, 401)
    right = form_post(admin, base + "/admin/login", base + "/admin/login", email=EMAIL,
                      password=PASSWORD)
    assert right.status_code == 302

    # An expired link's "send me a new link" (for someone who signed up before the outage)
    # answers as usual and records a new request.
    with app.app_context():
        sub = Subscriber(email="bo@example.com", timezone="UTC", status=Status.PENDING,
                         consent_at=utcnow())
        db.session.add(sub)
        db.session.commit()
        nonce = add_signup_request(sub).nonce
        with time_machine.travel(time.time() - app.config["CONFIRM_MAX_AGE"] - 60,
                                 tick=False):
            old = tokens.make("confirm", {"s": sub.id, "n": nonce})
    page = web.get(f"{base}/confirm/{old}", timeout=10)
    assert page.status_code == 410 and "Send me a new link" in page.text
    res = form_post(web, f"{base}/confirm/{old}", f"{base}/confirm/{old}/resend")
    assert res.status_code == 200 and "Check your inbox" in res.text

    # Redis is back: the cron's job finds both owed confirmations and sends them.
    with app.app_context():
        queue.enqueue("workers.tasks.send_owed_confirmations", queue_name=queue.TICK_QUEUE)
    run_jobs(app)
    assert sorted(m["To"].addresses[0].addr_spec for m in outbox) == [
        "ann@example.com", "bo@example.com"]
    with app.app_context():
        ann = db.session.scalar(db.select(Subscriber).where(Subscriber.email == "ann@example.com"))
        assert ann is not None and (ann.status, ann.name) == (Status.PENDING, "Ann")
    with app.app_context():
        assert {r.sent_at is not None for r in db.session.scalars(
            db.select(SignupRequest))} == {True}
    # Nothing is owed any more: the next minute's job sends nothing.
    with app.app_context():
        queue.enqueue("workers.tasks.send_owed_confirmations", queue_name=queue.TICK_QUEUE)
    run_jobs(app)
    assert len(outbox) == 2
