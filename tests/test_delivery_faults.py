"""Every failure class between us and SendGrid, each ending with exactly one accepted copy.

Before the connection (refused), after the request was written (a reset before or after
the body was read: not accepted), after it was accepted (dropped: no answer), a worker
killed while it waited, a job timeout while waiting and while reading, an outage of two
hours and a ``Retry-After`` of two minutes. Each test ends by reading the local SendGrid
server's ledger: one accepted copy of each lesson, and the subscriber on the right one.
Events reach the app's webhook as SendGrid posts them (``sg.take_events()``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from rq.timeouts import JobTimeoutException

from course import pipeline, sendstate
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Subscriber
from course.timeutil import utcnow
from tests.helpers import add_subscriber
from tests.sendgrid_server import SendGridServer

KEY = "SG.faults"
WINDOW = 60


@pytest.fixture
def sg() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY, events=True) as server:
        yield server


@pytest.fixture
def sg_app(make_app: Any, sg: SendGridServer) -> Flask:
    return make_app(MAIL_BACKEND="sendgrid", SENDGRID_API_KEY=KEY, SENDGRID_API_HOST=sg.url,
                    SENDGRID_TIMEOUT=1.0, SENDGRID_MAX_RETRIES=2,
                    UNCONFIRMED_WINDOW_SECONDS=WINDOW)


def tick(now: datetime | None = None) -> pipeline.TickResult:
    """A tick whose jobs run at once, on the same clock."""
    at = now or utcnow()
    return pipeline.tick(at, enqueue=lambda ids: _send(ids, at))


def _send(ids: list[int], at: datetime) -> None:
    pipeline.send_deliveries(ids, at)


def post_events(app: Flask, sg: SendGridServer) -> int:
    """What SendGrid's Event Webhook would post for everything it accepted so far."""
    events = sg.take_events()
    if events:
        response = app.test_client().post("/webhooks/sendgrid", json=events)
        assert response.status_code == 200, response.get_data(as_text=True)
    return len(events)


def state(email: str) -> tuple[str, int, str | None]:
    """(delivery status of lesson 1, the subscriber's next lesson, its status)."""
    db.session.expire_all()
    sub = db.session.scalar(db.select(Subscriber).where(Subscriber.email == email))
    assert sub is not None
    delivery = db.session.scalar(db.select(Delivery).where(
        Delivery.subscriber_id == sub.id, Delivery.position == 1))
    return (delivery.status if delivery else "none"), sub.next_position, sub.status


def accepted_once(sg: SendGridServer, *emails: str) -> None:
    counts = sg.count_by_recipient()
    assert {e: counts[e] for e in emails} == dict.fromkeys(emails, 1)
    assert sg.duplicates() == {}


def test_refused_before_connecting_is_queued_again_and_sent_once(make_app, sg):
    app = make_app(MAIL_BACKEND="sendgrid", SENDGRID_API_KEY=KEY,
                   SENDGRID_API_HOST="http://127.0.0.1:1", SENDGRID_MAX_RETRIES=0)
    with app.app_context():
        add_subscriber("refused@example.com")
        tick()
        assert state("refused@example.com")[:2] == (DeliveryStatus.QUEUED, 1)
        assert db.session.scalar(db.select(Delivery.attempts)) == 0
        app.config["SENDGRID_API_HOST"] = sg.url  # the network is back
        tick(utcnow() + timedelta(minutes=1))
        assert state("refused@example.com")[:2] == (DeliveryStatus.SENT, 2)
    accepted_once(sg, "refused@example.com")


@pytest.mark.parametrize("before_body", [True, False], ids=["before-body", "after-body"])
def test_a_reset_after_writing_is_unconfirmed_then_queued_again_past_the_watermark(
        sg_app, sg, before_body):
    sg.drop_next(accepted=False, before_body=before_body)
    with sg_app.app_context():
        add_subscriber("lost@example.com")
        tick()
        # The request was written, no answer came: it may have been taken.
        assert state("lost@example.com")[:2] == (DeliveryStatus.UNCONFIRMED, 1)
        # A later request goes through and its events come back: the provider's stream
        # has passed the lost one, which sent no event of its own.
        add_subscriber("later@example.com")
        tick()
        assert post_events(sg_app, sg) == 2
        # Within the window it still waits...
        tick(utcnow() + timedelta(seconds=WINDOW / 2))
        assert state("lost@example.com")[:2] == (DeliveryStatus.UNCONFIRMED, 1)
        # ...past it, the same row is queued again and goes out.
        tick(utcnow() + timedelta(seconds=WINDOW + 5))
        assert state("lost@example.com")[:2] == (DeliveryStatus.SENT, 2)
        assert state("later@example.com")[:2] == (DeliveryStatus.SENT, 2)
    accepted_once(sg, "lost@example.com", "later@example.com")


def test_a_drop_after_accepting_is_settled_sent_by_its_event_and_never_resent(sg_app, sg):
    sg.drop_next(accepted=True)
    with sg_app.app_context():
        add_subscriber("taken@example.com")
        tick()
        assert state("taken@example.com")[:2] == (DeliveryStatus.UNCONFIRMED, 1)
        post_events(sg_app, sg)  # processed, delivered: it was taken
        assert state("taken@example.com")[:2] == (DeliveryStatus.SENT, 2)
        tick(utcnow() + timedelta(seconds=WINDOW + 5))
    accepted_once(sg, "taken@example.com")


def test_without_events_an_unconfirmed_lesson_is_held_for_a_person(sg_app, sg):
    sg.drop_next(accepted=True)
    with sg_app.app_context():
        add_subscriber("held@example.com")
        tick()
        from course.unconfirmed import held

        later = utcnow() + timedelta(seconds=WINDOW + 5)
        tick(later)  # no event ever came, for it or anything later: hold it
        assert state("held@example.com")[:2] == (DeliveryStatus.UNCONFIRMED, 1)
        assert held(later) == (1, 1)
        sg_app.config["UNCONFIRMED_WITHOUT_EVENTS"] = "resend"
        tick(later)  # the owner chose to send again after the window
        assert state("held@example.com")[:2] == (DeliveryStatus.SENT, 2)
    assert sg.count_by_recipient()["held@example.com"] == 2  # the owner's choice


def test_a_worker_killed_while_waiting_out_a_429_leaves_its_lessons_queued_again(sg_app, sg):
    sg.fail_next(429, reset_in=4.0)  # the worker waits about 4 s, in the job
    with sg_app.app_context():
        add_subscriber("killed@example.com")
        pipeline.tick(enqueue=lambda ids: None)
        ids = list(db.session.scalars(db.select(Delivery.id)))
        db.session.remove()
        db.engine.dispose()
    pid = os.fork()
    if pid == 0:  # the worker: killed (SIGKILL, no clean-up) while it waits
        try:
            with sg_app.app_context():
                pipeline.send_deliveries(ids)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 10
    while not sg.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with sg_app.app_context():
        assert state("killed@example.com")[0] == DeliveryStatus.SENDING
        stale = utcnow() + timedelta(seconds=sg_app.config["SENDING_STALE_SECONDS"] + 1)
        tick(stale)  # its only request was refused: queued again, then sent
        assert state("killed@example.com")[:2] == (DeliveryStatus.SENT, 2)
    accepted_once(sg, "killed@example.com")


def _timeout_after(seconds: float) -> None:
    def fire(signum: int, frame: Any) -> None:
        raise JobTimeoutException("Task exceeded maximum timeout value")

    signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def test_a_job_timeout_while_waiting_queues_again_and_while_reading_is_unconfirmed(
        sg_app, sg):
    with sg_app.app_context():
        add_subscriber("waiting@example.com")
        add_subscriber("reading@example.com")
        pipeline.tick(enqueue=lambda ids: None)
        first, second = (db.session.scalar(
            db.select(Delivery.id).join(Subscriber).where(Subscriber.email == email))
            for email in ("waiting@example.com", "reading@example.com"))
        sg.fail_next(429, reset_in=4.0)
        _timeout_after(0.5)  # RQ's death penalty, during the wait for the 429's reset
        with pytest.raises(JobTimeoutException):
            pipeline.send_deliveries([first])
        assert state("waiting@example.com")[:2] == (DeliveryStatus.QUEUED, 1)
        assert db.session.get(Delivery, first).attempts == 0
        sg.delay_next(3.0)  # accepted; the answer comes after the job's time is up
        _timeout_after(0.5)
        with pytest.raises(JobTimeoutException):
            pipeline.send_deliveries([second])
        assert state("reading@example.com")[:2] == (DeliveryStatus.UNCONFIRMED, 1)
        sg.wait_for(1)
        post_events(sg_app, sg)
        tick(utcnow() + timedelta(minutes=1))
        assert state("waiting@example.com")[:2] == (DeliveryStatus.SENT, 2)
        assert state("reading@example.com")[:2] == (DeliveryStatus.SENT, 2)
    signal.setitimer(signal.ITIMER_REAL, 0)
    accepted_once(sg, "waiting@example.com", "reading@example.com")


def test_a_two_hour_outage_ends_with_everything_sent_and_nothing_failed(make_app, sg):
    emails = [f"outage{i}@example.com" for i in range(30)]
    sg_app = make_app(MAIL_BACKEND="sendgrid", SENDGRID_API_KEY=KEY, SENDGRID_API_HOST=sg.url,
                      SENDGRID_MAX_RETRIES=0)  # no retries inside a job: only the backoff
    sg.chaos(p5xx=1.0)
    with sg_app.app_context():
        for email in emails:
            add_subscriber(email)
        start = utcnow()
        for minutes in range(0, 121, 3):  # the tick every few minutes through the outage
            tick(start + timedelta(minutes=minutes))
        assert sg.ledger == [] and len(sg.requests) >= 5  # tried again and again
        statuses = set(db.session.scalars(db.select(Delivery.status)))
        assert statuses == {DeliveryStatus.QUEUED}
        assert set(db.session.scalars(db.select(Delivery.attempts))) == {0}
        sg.chaos()  # the provider is back
        tick(start + timedelta(minutes=130))
        assert {state(e)[:2] for e in emails} == {(DeliveryStatus.SENT, 2)}
        assert sendstate.backoff() is None
    accepted_once(sg, *emails)


def test_a_long_retry_after_is_honoured_by_queueing_not_waiting_and_costs_no_attempt(
        sg_app, sg):
    sg.fail_next(429, retry_after=120)
    with sg_app.app_context():
        add_subscriber("patient@example.com")
        start = utcnow()
        began = time.monotonic()
        tick(start)
        assert time.monotonic() - began < 3  # nobody sat out two minutes in a job
        held = sendstate.backing_off(start + timedelta(seconds=119))
        assert held is not None
        tick(start + timedelta(seconds=60))
        assert sg.ledger == []
        assert state("patient@example.com")[:2] == (DeliveryStatus.QUEUED, 1)
        tick(start + timedelta(seconds=121))
        assert state("patient@example.com")[:2] == (DeliveryStatus.SENT, 2)
        assert db.session.scalar(db.select(Delivery.attempts)) == 1
    accepted_once(sg, "patient@example.com")
