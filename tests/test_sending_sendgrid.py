"""The pipeline against the local SendGrid server: what each provider answer does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from course import pipeline, sendstate
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Subscriber
from course.timeutil import utcnow
from tests.helpers import add_subscriber
from tests.sendgrid_server import SendGridServer

KEY = "SG.pipeline-test"


@pytest.fixture
def sg() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def sg_app(make_app, sg):
    return make_app(MAIL_BACKEND="sendgrid", SENDGRID_API_KEY=KEY, SENDGRID_API_HOST=sg.url,
                    SENDGRID_TIMEOUT=0.5, SENDGRID_MAX_RETRIES=2)


def send_now(ids: list[int]) -> None:
    try:
        pipeline.send_deliveries(ids)
    except Exception:  # noqa: BLE001 - the job would be retried by RQ; the test checks rows
        pass


def statuses() -> list[tuple[str, str]]:
    return [(d.status, d.error) for d in db.session.scalars(
        db.select(Delivery).order_by(Delivery.id))]


def test_a_batch_goes_out_in_one_call_with_each_recipients_links(sg_app, sg):
    with sg_app.app_context():
        for i in range(25):
            add_subscriber(f"batch{i}@example.com", name=f"Reader {i}")
        pipeline.tick(enqueue=send_now)
        assert {s for s, _ in statuses()} == {DeliveryStatus.SENT}
        ids = {d.id for d in db.session.scalars(db.select(Delivery))}
        message_ids = {d.provider_message_id for d in db.session.scalars(db.select(Delivery))}
    assert sg.stats()["accepted_requests"] == 1
    assert len(message_ids) == 1 and "" not in message_ids
    entries = sg.ledger
    assert {int(e.custom_args["delivery_id"]) for e in entries} == ids
    assert len({e.email for e in entries}) == 25
    # Substitutions made each recipient's copy personal.
    one = next(e for e in entries if e.email == "batch3@example.com")
    assert "Hi Reader 3," in one.text
    assert one.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_a_400_fails_the_deliveries_with_the_providers_words(sg_app, sg):
    sg.fail_next(400, message="The from address does not match a verified Sender Identity.")
    with sg_app.app_context():
        add_subscriber("refused@example.com")
        pipeline.tick(enqueue=send_now)
        [(status, error)] = statuses()
    assert status == DeliveryStatus.FAILED
    assert "does not match a verified Sender Identity" in error


def test_a_413_for_a_single_recipient_fails_it(sg_app, sg):
    sg.fail_next(413)
    with sg_app.app_context():
        add_subscriber("huge@example.com")
        pipeline.tick(enqueue=send_now)
        [(status, error)] = statuses()
    assert status == DeliveryStatus.FAILED and "413" in error


def test_5xx_then_success_sends_once(sg_app, sg):
    sg.fail_next(503)
    with sg_app.app_context():
        add_subscriber("busy@example.com")
        pipeline.tick(enqueue=send_now)
        [(status, _)] = statuses()
    assert status == DeliveryStatus.SENT
    assert len(sg.ledger) == 1


def test_provider_down_requeues_without_losing_anything(sg_app, sg):
    sg.fail_next(500, times=3)  # the first try and both retries
    with sg_app.app_context():
        sub_id = add_subscriber("later@example.com").id
        pipeline.tick(enqueue=send_now)
        [(status, error)] = statuses()
        assert status == DeliveryStatus.QUEUED and "500" in error
        assert db.session.scalar(db.select(Delivery.attempts)) == 0  # an outage costs none
        # Every worker backs off: within it nothing is claimed.
        ids = [d.id for d in db.session.scalars(db.select(Delivery))]
        assert pipeline.send_deliveries(ids) == 0
        # Past it, the tick enqueues the lesson again and it goes out, once.
        later = utcnow() + timedelta(minutes=1)
        assert pipeline.tick(later, enqueue=lambda ids: pipeline.send_deliveries(ids, later)
                             ).enqueued == 1
        [(status, _)] = statuses()
        assert status == DeliveryStatus.SENT
        assert db.session.get(Subscriber, sub_id).next_position == 2
        assert sendstate.backoff() is None  # the outage is over for everyone
    assert len(sg.ledger) == 1


def test_a_timeout_after_sending_is_unconfirmed_holds_the_subscriber_and_is_never_resent(
        sg_app, sg):
    sg.delay_next(2.0)  # accepted, but the answer comes after the client's 0.5 s timeout
    with sg_app.app_context():
        sub_id = add_subscriber("maybe@example.com").id
        pipeline.tick(enqueue=send_now)
        [(status, error)] = statuses()
        assert status == DeliveryStatus.UNCONFIRMED and "may have been accepted" in error
        # The subscriber waits at that lesson until it is settled...
        sub = db.session.get(Subscriber, sub_id)
        assert (sub.next_position, sub.next_send_at) == (1, None)
        # ...and no later tick sends lesson 1 again.
        pipeline.tick(utcnow(), enqueue=send_now)
    sg.wait_for(1)
    assert [e.email for e in sg.ledger] == ["maybe@example.com"]


def test_a_refused_key_pauses_sending_until_the_provider_accepts_it(sg_app, sg):
    sg.api_key = "SG.rotated"  # our key no longer works
    with sg_app.app_context():
        add_subscriber("paused@example.com")
        pipeline.tick(enqueue=send_now)
        [(status, error)] = statuses()
        assert status == DeliveryStatus.QUEUED and "401" in error
        assert "refused our credentials" in sendstate.paused()["reason"]
        # While paused, nothing is claimed or enqueued, however often the tick runs.
        enqueued: list[list[int]] = []
        assert pipeline.tick(enqueue=enqueued.append).enqueued == 0
        assert pipeline.send_deliveries([d.id for d in db.session.scalars(
            db.select(Delivery))]) == 0
        assert enqueued == [] and sg.ledger == []
        # The owner fixes the key: the next tick notices and sending resumes.
        sg.api_key = KEY
        pipeline.tick(enqueue=send_now)
        assert sendstate.paused() is None
        [(status, _)] = statuses()
        assert status == DeliveryStatus.SENT
        attempts = db.session.scalar(db.select(Delivery.attempts))
        assert attempts == 1  # the refused attempt did not count against it
    assert len(sg.ledger) == 1


def test_a_forbidden_key_pauses_too(sg_app, sg):
    sg.forbidden_keys.add(KEY)
    with sg_app.app_context():
        add_subscriber("forbidden@example.com")
        pipeline.tick(enqueue=send_now)
        assert "403" in sendstate.paused()["reason"]


def test_a_job_of_several_requests_settles_each_before_claiming_the_next(sg_app, sg):
    """A job carries up to five requests' worth; when the second request keeps failing,
    the first is sent, the failed one is queued again, the rest was never claimed, and
    nothing is left ``sending``. Once the backoff is over the rest goes out, once."""
    jobs: list[list[int]] = []
    with sg_app.app_context():
        db.session.add_all(
            Subscriber(email=f"many{i}@example.com", timezone="UTC", status="active",
                       next_position=1, next_send_at=utcnow(), consent_at=utcnow())
            for i in range(2500))
        db.session.commit()
        pipeline.tick(enqueue=jobs.append)
        assert [len(job) for job in jobs] == [2500]  # one job, three requests' worth
        sg.pass_next()
        sg.fail_next(503, times=3)  # the second request, and both of its retries
        assert pipeline.send_deliveries(jobs[0]) == 1000
        counts = dict(db.session.execute(
            db.select(Delivery.status, db.func.count()).group_by(Delivery.status)).all())
        assert counts == {DeliveryStatus.SENT: 1000, DeliveryStatus.QUEUED: 1500}
        # Released for the tick, none of them charged an attempt.
        assert db.session.scalar(db.select(db.func.count()).where(
            Delivery.status == DeliveryStatus.QUEUED, Delivery.enqueued_at.is_(None),
            Delivery.attempts == 0)) == 1500
        later = utcnow() + timedelta(minutes=1)
        assert pipeline.send_deliveries(jobs[0], later) == 1500
    assert len(sg.ledger) == 2500 and sg.duplicates() == {}
