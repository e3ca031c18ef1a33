"""Two `rq cron` schedulers and three workers at once: every lesson goes out exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, update

from course.extensions import db
from course.models import Delivery, DeliveryStatus, Status, Subscriber
from course.timeutil import utcnow
from tests.conftest import REDIS_URL, SECRET
from tests.sendgrid_server import SendGridServer

ROOT = Path(__file__).resolve().parent.parent
KEY = "SG.many-processes"
SUBSCRIBERS = 150
LESSONS = 10


def env_for(app, sg: SendGridServer, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"], REDIS_URL=REDIS_URL,
        SECRET_KEY=SECRET, MAIL_BACKEND="sendgrid", SENDGRID_API_KEY=KEY,
        SENDGRID_API_HOST=sg.url, MAIL_FROM="course@minicourse.test",
        BASE_URL="http://localhost", MINICOURSE_INSTANCE=str(tmp_path / "instance"),
        PYTHONPATH=str(ROOT),
    )
    return env


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_two_crons_and_three_workers_send_each_lesson_exactly_once(app, tmp_path):
    with app.app_context():
        now = utcnow()
        db.session.add_all(
            Subscriber(email=f"p{i}@example.com", name=f"P{i}", timezone="UTC",
                       status=Status.ACTIVE, next_position=1, next_send_at=now,
                       consent_at=now, consent_version="test")
            for i in range(SUBSCRIBERS)
        )
        db.session.commit()
    procs: list[subprocess.Popen[bytes]] = []
    with SendGridServer(api_key=KEY, latency=0.01) as sg:
        env = env_for(app, sg, tmp_path)
        try:
            for n in range(2):
                procs.append(spawn([sys.executable, "-m", "rq.cli", "cron",
                                    "tests/cron_every_second.py", "--url", REDIS_URL],
                                   env, tmp_path / f"cron{n}.log"))
            for n in range(3):
                procs.append(spawn([sys.executable, "-m", "workers.worker", "--name",
                                    f"many-{os.getpid()}-{n}"], env, tmp_path / f"w{n}.log"))
            deadline = time.monotonic() + 150
            with app.app_context():
                while time.monotonic() < deadline:
                    finished = db.session.scalar(
                        db.select(func.count()).select_from(Subscriber)
                        .where(Subscriber.status == Status.FINISHED))
                    if finished == SUBSCRIBERS:
                        break
                    # Play time forward: whatever is scheduled for later is due now. (When
                    # lessons fall due is tested in test_course_e2e; this is about concurrency.)
                    db.session.execute(update(Subscriber).where(
                        Subscriber.next_send_at.is_not(None)).values(next_send_at=utcnow()))
                    db.session.commit()
                    time.sleep(0.5)
                else:
                    logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
                    pytest.fail(f"only {finished}/{SUBSCRIBERS} finished in time\n{logs}")
        finally:
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        ledger = sg.ledger
    per_delivery = Counter(e.custom_args["delivery_id"] for e in ledger)
    assert set(per_delivery.values()) == {1}, "a delivery went out twice"
    per_lesson = Counter((e.email, e.subject) for e in ledger)
    assert set(per_lesson.values()) == {1}, "someone got the same lesson twice"
    assert len(ledger) == SUBSCRIBERS * LESSONS
    with app.app_context():
        assert db.session.scalar(db.select(func.count()).select_from(Delivery).where(
            Delivery.status == DeliveryStatus.SENT)) == SUBSCRIBERS * LESSONS
    # Both schedulers really ran ticks.
    for n in range(2):
        assert "minicourse-tick" in (tmp_path / f"cron{n}.log").read_text()
