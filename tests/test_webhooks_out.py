"""Outgoing webhooks: integrators get signed, retried, deduplicable events, and what gave
up is on record for the admin. A real HTTP receiver on loopback stands in for them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from course import ConfigError, pipeline, signup, webhooks_out
from course.config import load
from course.extensions import db
from course.models import OutgoingWebhook, Status
from course.queue import MAIL_QUEUE, queue
from course.timeutil import utcnow
from tests.conftest import run_jobs
from tests.helpers import add_signup_request, add_subscriber
from tests.webhook_receiver import Receiver

SECRET = "whsec-test-0123456789abcdef0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


@pytest.fixture
def hook_app(make_app: Any, receiver: Receiver) -> Flask:
    return make_app(WEBHOOK_URLS=(receiver.url + "/a", receiver.url + "/b"),
                    WEBHOOK_SECRET=SECRET, WEBHOOK_RETRY_BASE=0, WEBHOOK_MAX_ATTEMPTS=3,
                    WEBHOOK_TIMEOUT=2.0)


def rows() -> list[OutgoingWebhook]:
    db.session.expire_all()
    return list(db.session.scalars(db.select(OutgoingWebhook).order_by(OutgoingWebhook.id)))


def check_signature(headers: dict[str, str], body: bytes) -> None:
    """What an integrator does, written out here rather than calling our own helper."""
    fields = dict(part.split("=", 1) for part in headers["Minicourse-Signature"].split(","))
    assert abs(time.time() - int(fields["t"])) < 60
    expected = hmac.new(SECRET.encode(), fields["t"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)


def test_confirming_and_the_first_lesson_reach_every_url_signed(hook_app: Flask, receiver):
    with hook_app.app_context():
        sub = add_subscriber("ada@example.org", status=Status.PENDING, name="Ada")
        sub_id = sub.id
        signup.confirm(sub_id, add_signup_request(sub).nonce)  # also enqueues the tick
        run_jobs(hook_app)
    received = sorted(receiver.requests, key=lambda r: (json.loads(r.body)["type"], r.path))
    assert [(json.loads(r.body)["type"], r.path) for r in received] == [
        ("lesson.sent", "/a"), ("lesson.sent", "/b"),
        ("subscriber.confirmed", "/a"), ("subscriber.confirmed", "/b")]
    for r in received:
        check_signature(r.headers, r.body)
        assert r.headers["Content-Type"] == "application/json"
    confirmed = json.loads(received[2].body)
    assert set(confirmed) == {"id", "type", "created", "data"}
    assert confirmed["data"]["subscriber"] == {"id": sub_id, "email": "ada@example.org"}
    assert received[2].headers["Minicourse-Event-Id"] == confirmed["id"]
    sent = json.loads(received[0].body)["data"]
    assert sent["lesson"]["position"] == 1 and sent["subscriber"]["id"] == sub_id
    ids = [json.loads(r.body)["id"] for r in received]
    assert len(set(ids)) == 4  # one id per event and URL: receivers dedupe on it
    with hook_app.app_context():
        assert {(w.status, w.attempts) for w in rows()} == {("sent", 1)}
        assert all(w.delivered_at is not None for w in rows())


def test_a_forged_or_replayed_late_signature_does_not_verify():
    body = b'{"id":"evt_1"}'
    header = webhooks_out.sign(SECRET, int(time.time()), body)
    assert webhooks_out.verify(SECRET, header, body)
    assert not webhooks_out.verify(SECRET, header, body + b" ")
    assert not webhooks_out.verify("another-secret", header, body)
    assert not webhooks_out.verify(SECRET, header, body, now=time.time() + 301)
    assert not webhooks_out.verify(SECRET, "v1=abc", body)


def test_failures_are_retried_with_the_same_event_id(hook_app: Flask, receiver):
    receiver.fail_next(2, status=503)
    with hook_app.app_context():
        hook_app.config["WEBHOOK_URLS"] = (receiver.url + "/a",)
        sub = add_subscriber("grace@example.org")
        signup.unsubscribe(sub.id)
        run_jobs(hook_app)
        [row] = rows()
        assert (row.kind, row.status, row.attempts, row.last_error) == (
            "subscriber.unsubscribed", "sent", 3, "")
    assert [r.answered for r in receiver.requests] == [503, 503, 200]
    assert len({json.loads(r.body)["id"] for r in receiver.requests}) == 1
    for r in receiver.requests:
        check_signature(r.headers, r.body)  # signed afresh at each attempt


def test_giving_up_is_recorded_for_the_admin_and_can_be_retried(hook_app: Flask, receiver):
    receiver.always = 500
    with hook_app.app_context():
        hook_app.config["WEBHOOK_URLS"] = (receiver.url + "/a",)
        sub = add_subscriber("alan@example.org")
        signup.unsubscribe(sub.id)
        run_jobs(hook_app)
        [row] = rows()
        assert (row.status, row.attempts) == ("failed", 3)
        assert row.last_error == "HTTP 500: receiver says no"
        assert [w.id for w in webhooks_out.failed_webhooks(10)] == [row.id]
        assert webhooks_out.webhook_counts() == {"pending": 0, "sent": 0, "failed": 1}
        assert len(receiver.requests) == 3
        # The admin's "try again" once the receiver is fixed.
        receiver.always = None
        assert webhooks_out.retry_failed([row.id]) == 1
        run_jobs(hook_app)
        [row] = rows()
        assert (row.status, row.attempts, row.last_error) == ("sent", 1, "")
        assert webhooks_out.failed_webhooks(10) == []


@pytest.mark.parametrize(("script", "error"), [
    ("redirect", "HTTP 302"),
    ("slow", "timed out"),
    ("closed", "could not connect"),
])
def test_redirects_timeouts_and_refused_connections_are_failures(make_app, receiver, script,
                                                                  error):
    url = receiver.url + "/a"
    if script == "redirect":
        receiver.always = 302
    elif script == "slow":
        receiver.delay = 1.0
    else:
        receiver.stop()
    app = make_app(WEBHOOK_URLS=(url,), WEBHOOK_SECRET=SECRET, WEBHOOK_RETRY_BASE=0,
                   WEBHOOK_MAX_ATTEMPTS=1, WEBHOOK_TIMEOUT=0.3)
    with app.app_context():
        signup.unsubscribe(add_subscriber("x@example.org").id)
        run_jobs(app)
        [row] = rows()
        assert row.status == "failed" and error in row.last_error
    if script == "redirect":
        assert [r.path for r in receiver.requests] == ["/a"]  # not followed


def test_a_rolled_back_change_announces_nothing(hook_app: Flask, receiver):
    with hook_app.app_context():
        sub = add_subscriber("rollback@example.org")
        webhooks_out.emit("subscriber.unsubscribed", webhooks_out.subscriber_data(
            sub.id, sub.email))
        db.session.rollback()
        db.session.commit()  # a later commit must not enqueue the forgotten rows
        assert rows() == []
        assert queue(MAIL_QUEUE).count == 0


def test_rows_are_enqueued_only_after_the_commit(hook_app: Flask, receiver):
    with hook_app.app_context():
        sub = add_subscriber("later@example.org")
        webhooks_out.emit("subscriber.unsubscribed", webhooks_out.subscriber_data(
            sub.id, sub.email))
        assert queue(MAIL_QUEUE).count == 0
        db.session.commit()
        assert queue(MAIL_QUEUE).count == 2  # one job per URL


def test_without_urls_nothing_is_stored(make_app):
    app = make_app()
    with app.app_context():
        sub = add_subscriber("quiet@example.org")
        signup.unsubscribe(sub.id)
        pipeline.tick()
        assert rows() == []


def test_unknown_event_types_are_a_programming_error(hook_app: Flask):
    with hook_app.app_context(), pytest.raises(ValueError):
        webhooks_out.emit("subscriber.teleported", {})


def test_rows_whose_job_redis_lost_are_sent_later(hook_app: Flask, receiver, redis_conn):
    with hook_app.app_context():
        sub = add_subscriber("lost@example.org")
        signup.unsubscribe(sub.id)
        redis_conn.flushdb()  # Redis restarted before a worker took the jobs
        assert webhooks_out.requeue_lost() == 0  # too recent to call lost
        for row in rows():
            row.created_at = utcnow() - timedelta(minutes=11)
        db.session.commit()
        # A page of one: the second lost row is found past the first all the same.
        assert webhooks_out.requeue_lost(page=1) == 2
        assert webhooks_out.requeue_lost() == 0  # queued now: not enqueued twice
        run_jobs(hook_app)
        assert {w.status for w in rows()} == {"sent"}
    assert len(receiver.requests) == 2


def test_config_needs_a_secret_and_https_in_production(tmp_path: Path):
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET is not"):
        load({"WEBHOOK_URLS": "https://crm.example.com/hook"}, tmp_path)
    with pytest.raises(ConfigError, match="not an absolute http"):
        load({"WEBHOOK_URLS": "crm.example.com/hook", "WEBHOOK_SECRET": SECRET}, tmp_path)
    cfg = load({"WEBHOOK_URLS": " https://a.example.com/h , http://localhost:9000/h ",
                "WEBHOOK_SECRET": SECRET}, tmp_path)
    assert cfg["WEBHOOK_URLS"] == ("https://a.example.com/h", "http://localhost:9000/h")
    production = {"MINICOURSE_ENV": "production", "WEBHOOK_SECRET": SECRET,
                  "WEBHOOK_URLS": "http://crm.example.com/hook"}
    with pytest.raises(ConfigError, match="must use https:// in production"):
        load(production, tmp_path)
