"""The tick and the workers: each lesson once, nothing lost, nothing resent blindly."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path

import pytest
import time_machine
from rq import Queue
from sqlalchemy import event

from course import pipeline
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Status, Subscriber
from course.queue import MAIL_QUEUE, redis_connection
from course.timeutil import utcnow
from tests.conftest import REDIS_URL, SECRET, run_jobs
from tests.helpers import add_subscriber

ROOT = Path(__file__).resolve().parent.parent


def deliveries(status: str | None = None) -> list[Delivery]:
    stmt = db.select(Delivery).order_by(Delivery.id)
    if status:
        stmt = stmt.where(Delivery.status == status)
    return list(db.session.scalars(stmt))


def mail_jobs() -> list[list[int]]:
    q = Queue(MAIL_QUEUE, connection=redis_connection())
    return [job.args[0] for job in q.get_jobs()]


def test_tick_turns_due_subscribers_into_one_batch_per_lesson(app):
    with app.app_context():
        due = [add_subscriber(f"due{i}@example.com") for i in range(3)]
        add_subscriber("later@example.com", next_send_at=utcnow() + timedelta(hours=1))
        add_subscriber("paused@example.com", status=Status.PAUSED, next_send_at=utcnow())
        result = pipeline.tick()
        assert result.created == 3
        assert mail_jobs() == [sorted(d.id for d in deliveries())]
        assert {d.subscriber_id for d in deliveries()} == {s.id for s in due}
        assert all(d.status == DeliveryStatus.QUEUED and d.position == 1 for d in deliveries())
        # The subscribers are now in flight: nothing more is due for them.
        assert all(db.session.get(Subscriber, s.id).next_send_at is None for s in due)


def test_a_second_tick_creates_and_enqueues_nothing_new(app):
    with app.app_context():
        for i in range(4):
            add_subscriber(f"s{i}@example.com")
        pipeline.tick()
        second = pipeline.tick()
        assert (second.created, second.enqueued) == (0, 0)
        assert len(deliveries()) == 4
        assert len(mail_jobs()) == 1


def test_claim_gives_each_delivery_to_one_caller_only(app):
    with app.app_context():
        for i in range(3):
            add_subscriber(f"c{i}@example.com")
        pipeline.tick(enqueue=lambda ids: None)
        ids = [d.id for d in deliveries()]
        now = utcnow()
        assert pipeline.claim(ids, now) == ids
        assert pipeline.claim(ids, now) == []


def test_the_same_job_run_twice_sends_once(app, outbox):
    with app.app_context():
        for i in range(5):
            add_subscriber(f"twice{i}@example.com")
        pipeline.tick()
        ids = mail_jobs()[0]
        pipeline.enqueue_send(ids)  # a duplicate of the same work
    run_jobs(app)
    assert sorted(m["To"].addresses[0].addr_spec for m in outbox) == sorted(
        f"twice{i}@example.com" for i in range(5)
    )


def worker_env(app, outbox_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
        REDIS_URL=REDIS_URL,
        SECRET_KEY=SECRET,
        MAIL_BACKEND="outbox",
        OUTBOX_DIR=str(outbox_dir),
        BASE_URL="http://localhost",
        MINICOURSE_INSTANCE=str(outbox_dir.parent / "instance"),
        PYTHONPATH=str(ROOT),
    )
    return env


def start_workers(app, outbox_dir: Path, count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "workers.worker", "--burst",
             "--name", f"test-w{i}-{os.getpid()}"],
            cwd=ROOT, env=worker_env(app, outbox_dir),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for i in range(count)
    ]


def recipients_in(outbox_dir: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in outbox_dir.glob("*.eml"):
        msg = message_from_bytes(path.read_bytes())
        counts[f"{msg['To']}|{msg['Subject']}"] += 1
    return counts


@pytest.mark.slow
def test_duplicate_ticks_and_jobs_on_two_worker_processes_send_each_lesson_once(app, tmp_path):
    """Invariant 1, for real: two forking RQ workers race over duplicated work."""
    outbox_dir = tmp_path / "outbox"
    with app.app_context():
        for i in range(40):
            add_subscriber(f"race{i}@example.com")
        pipeline.tick()
        pipeline.tick()
        ids = [d.id for d in deliveries()]
        assert len(ids) == 40
        # The same work enqueued several more times, in different shapes.
        for _ in range(3):
            pipeline.enqueue_send(ids)
        pipeline.enqueue_send(ids[:20])
        pipeline.enqueue_send(list(reversed(ids[10:])))
    workers = start_workers(app, outbox_dir, 2)
    logs = []
    for w in workers:
        out, _ = w.communicate(timeout=120)
        logs.append(out.decode())
        assert w.returncode == 0, logs[-1]
    counts = recipients_in(outbox_dir)
    print("\n".join(logs))
    assert len(counts) == 40
    assert set(counts.values()) == {1}
    with app.app_context():
        assert {d.status for d in deliveries()} == {DeliveryStatus.SENT}


def test_redis_flushed_mid_flight_loses_nothing(app, outbox, redis_conn):
    with app.app_context():
        for i in range(3):
            add_subscriber(f"flush{i}@example.com")
        pipeline.tick()
    redis_conn.flushdb()  # Redis restarts empty: the queued jobs are gone
    run_jobs(app)
    assert outbox == []
    with app.app_context():
        # Still in flight as far as the database knows: not re-enqueued straight away...
        assert pipeline.tick().enqueued == 0
        later = utcnow() + timedelta(seconds=app.config["REQUEUE_AFTER_SECONDS"] + 1)
        # ...but once the in-flight window has passed, the tick rebuilds the work.
        assert pipeline.tick(later).enqueued == 3
    run_jobs(app)
    assert len(outbox) == 3


def test_a_worker_dead_before_writing_its_request_leaves_the_lesson_queued_again(app, outbox):
    with app.app_context():
        sub_id = add_subscriber("stuck@example.com").id
        pipeline.tick(enqueue=lambda ids: None)
        (delivery,) = deliveries()
        delivery_id = delivery.id
        pipeline.claim([delivery_id], utcnow())  # the worker died right after claiming
        pipeline.enqueue_send([delivery_id])
    run_jobs(app)  # the duplicate job finds nothing to claim
    assert outbox == []
    later = utcnow() + timedelta(minutes=11)
    with time_machine.travel(later):
        with app.app_context():
            assert [d.id for d in pipeline.stuck_sending()] == [delivery_id]
            assert deliveries()[0].status == DeliveryStatus.SENDING
            # Within the stale window the tick leaves it alone (the job could still run)...
            assert pipeline.tick().unconfirmed == 0
    stale = utcnow() + timedelta(seconds=app.config["SENDING_STALE_SECONDS"] + 1)
    with time_machine.travel(stale):
        with app.app_context():
            # ...past it: no request was written, so it never left and is queued again.
            assert pipeline.tick().unconfirmed == 0
            (delivery,) = deliveries()
            assert (delivery.status, delivery.attempts) == (DeliveryStatus.QUEUED, 0)
        run_jobs(app)
        with app.app_context():
            assert deliveries()[0].status == DeliveryStatus.SENT
            assert db.session.get(Subscriber, sub_id).next_position == 2
    assert len(outbox) == 1


def test_a_worker_dead_after_writing_its_request_leaves_it_unconfirmed_holding_the_subscriber(
        app, outbox):
    from course.send_requests import Journal

    with app.app_context():
        sub_id = add_subscriber("written@example.com").id
        pipeline.tick(enqueue=lambda ids: None)
        (delivery,) = deliveries()
        delivery_id = delivery.id
        pipeline.claim([delivery_id], utcnow())
        journal = Journal(utcnow())
        journal.begin([delivery_id])
        journal.written()  # the request went out; then the worker was killed
    stale = utcnow() + timedelta(seconds=app.config["SENDING_STALE_SECONDS"] + 1)
    with time_machine.travel(stale):
        with app.app_context():
            assert pipeline.tick().unconfirmed == 1
            (delivery,) = deliveries()
            assert delivery.status == DeliveryStatus.UNCONFIRMED
            assert delivery.request_id == journal.request_id
            assert "may have been accepted" in delivery.error
            sub = db.session.get(Subscriber, sub_id)
            # Held at that lesson: nothing later is scheduled past it.
            assert sub.next_position == 1 and sub.next_send_at is None
        run_jobs(app)
    assert outbox == []


def test_the_admin_can_resend_an_unknown_delivery(app, outbox):
    with app.app_context():
        add_subscriber("again@example.com")
        pipeline.tick(enqueue=lambda ids: None)
        (delivery,) = deliveries()
        pipeline.claim([delivery.id], utcnow())
        db.session.execute(db.update(Delivery).values(status=DeliveryStatus.UNCONFIRMED))
        db.session.commit()
        assert pipeline.resend([delivery.id]) == 1
        assert pipeline.resend([delivery.id]) == 0  # already queued again
        pipeline.tick()
    run_jobs(app)
    assert len(outbox) == 1


def test_provider_unreachable_backs_off_and_never_uses_an_attempt(make_app, outbox):
    from course import sendstate

    app = make_app(MAIL_BACKEND="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=1, SEND_MAX_ATTEMPTS=2)
    with app.app_context():
        add_subscriber("retry@example.com")
        pipeline.tick(enqueue=lambda ids: None)
        (delivery,) = deliveries()
        for n in range(1, 5):
            now = utcnow() + timedelta(hours=n)  # each past the previous backoff
            assert pipeline.send_deliveries([delivery.id], now) == 0
            db.session.expire_all()
            assert (delivery.status, delivery.attempts) == (DeliveryStatus.QUEUED, 0)
            assert "cannot connect" in delivery.error and delivery.enqueued_at is None
            held = sendstate.backing_off(now)
            assert held is not None and held["failures"] == n
            # While it holds nobody claims, and the tick enqueues nothing.
            assert pipeline.tick(now, enqueue=lambda ids: pytest.fail("enqueued")).enqueued == 0


def test_unsubscribed_before_the_worker_runs_gets_nothing(app, outbox):
    from course.signup import unsubscribe

    with app.app_context():
        sub = add_subscriber("gone@example.com")
        pipeline.tick()
        unsubscribe(sub.id)
        assert [d.status for d in deliveries()] == [DeliveryStatus.CANCELLED]
    run_jobs(app)
    assert outbox == []


def test_after_the_last_lesson_the_subscriber_is_finished(app, outbox):
    with app.app_context():
        sub = add_subscriber("almost@example.com", next_position=10)
        pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
        db.session.refresh(sub)
        assert (sub.status, sub.next_send_at, sub.next_position) == (Status.FINISHED, None, 11)
    assert outbox[0]["Subject"].startswith("Day 10")


def test_rejoining_after_an_unsubscribe_gets_the_cancelled_lesson(app, outbox):
    from course.signup import Consent, confirm, handle, signup, unsubscribe

    with app.test_request_context():
        sub = add_subscriber("back@example.com")
        sub_id = sub.id
        pipeline.tick(enqueue=lambda ids: None)
        unsubscribe(sub_id)
        assert [d.status for d in deliveries()] == [DeliveryStatus.CANCELLED]
        req = signup("back@example.com", "", "UTC", Consent("127.0.0.1", "pytest"))
        handle(req.id)  # what its job does
        confirm(sub_id, req.nonce)
        pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
        assert [(d.position, d.status) for d in deliveries()] == [(1, DeliveryStatus.SENT)]
    assert [m["Subject"] for m in outbox if m["Subject"].startswith("Day")] == [
        "Day 1: Why your biggest fans may hesitate"
    ]


def test_a_tick_overtaken_between_its_read_and_its_write_strands_nobody(app):
    """Tick B reads S as due at lesson 1; before B writes, tick A sends lesson 1 and S moves
    on to lesson 2. B's write must not leave S with nothing due and nothing in flight."""
    with app.app_context():
        sub_id = add_subscriber("overtaken@example.com").id
        engine = db.engine
    b_has_read, go_on = threading.Event(), threading.Event()

    def pause_b(conn, cursor, statement, *args):
        if (threading.current_thread().name == "tick-B"
                and statement.lstrip().startswith(("UPDATE subscriber SET next_send_at",
                                                   "WITH due AS"))):
            b_has_read.set()
            go_on.wait(5)

    event.listen(engine, "before_cursor_execute", pause_b)
    try:
        def tick_b() -> None:
            with app.app_context():
                pipeline.tick(enqueue=lambda ids: None)
                db.session.remove()

        b = threading.Thread(target=tick_b, name="tick-B")
        b.start()
        assert b_has_read.wait(5)
        with app.app_context():  # tick A and a worker, while B waits for the write lock
            pipeline.tick(enqueue=pipeline.send_deliveries)
            db.session.remove()
        go_on.set()
        b.join()
    finally:
        event.remove(engine, "before_cursor_execute", pause_b)
    with app.app_context():
        sub = db.session.get(Subscriber, sub_id)
        in_flight = db.session.scalar(db.select(db.func.count()).where(
            Delivery.subscriber_id == sub_id,
            Delivery.status.in_([DeliveryStatus.QUEUED, DeliveryStatus.SENDING])))
        assert sub.next_send_at is not None or in_flight, (
            f"stranded at lesson {sub.next_position}: nothing due, nothing in flight")


@pytest.mark.parametrize("rate, size", [(0, 5000), (300, 1000), (2500, 2000), (50000, 5000)])
def test_send_jobs_hold_a_second_of_sending_when_a_rate_is_set(make_app, rate, size):
    """Without a rate a job packs five requests' worth; with one, about a second of sending,
    so a tick's jobs spread over the workers and the shared clock never waits for one."""
    app = make_app(SEND_RATE=rate)
    with app.app_context():
        assert pipeline.job_size() == size
