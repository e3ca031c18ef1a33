"""What the owner sees of unconfirmed lessons and can do with them, and resends that work.

Unconfirmed lessons hold their subscribers; the dashboard counts them, the provider's
``dropped`` fails one, "it arrived" settles one as sent (audited, the subscriber moves
on), and a bulk resend for finished subscribers goes out instead of being cancelled,
with the page reporting how many were sent.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from conftest import csrf_from, run_jobs

from course import pipeline
from course.content import current_course
from course.extensions import db
from course.models import AuditEntry, Delivery, DeliveryStatus, Status, Subscriber
from course.timeutil import utcnow
from tests.helpers import add_subscriber


def add_delivery(subscriber_id: int, position: int, status: str, **fields: Any) -> int:
    lesson = current_course().lesson_at(position)
    assert lesson is not None
    delivery = Delivery(subscriber_id=subscriber_id, lesson_slug=lesson.slug,
                        position=position, status=status, **fields)
    db.session.add(delivery)
    db.session.commit()
    return delivery.id


def held_subscriber(email: str, claimed_minutes_ago: int = 5) -> tuple[int, int]:
    """A subscriber held at lesson 1 by an unconfirmed delivery: (subscriber, delivery)."""
    sub = add_subscriber(email, next_send_at=None)
    sub.next_send_at = None
    db.session.commit()
    claimed = utcnow() - timedelta(minutes=claimed_minutes_ago)
    return sub.id, add_delivery(sub.id, 1, DeliveryStatus.UNCONFIRMED, attempts=1,
                                claimed_at=claimed, error="no answer from SendGrid")


def test_a_dropped_event_fails_an_unconfirmed_lesson_and_any_other_event_sends_it(app):
    with app.app_context():
        _, dropped = held_subscriber("dropped@example.com")
        sub_id, opened = held_subscriber("opened@example.com")
        at = int(utcnow().timestamp())
        client = app.test_client()
        response = client.post("/webhooks/sendgrid", json=[
            {"event": "dropped", "email": "dropped@example.com", "timestamp": at,
             "delivery_id": str(dropped), "reason": "Bounced Address"},
            {"event": "open", "email": "opened@example.com", "timestamp": at,
             "delivery_id": str(opened)}])
        assert response.status_code == 200
        db.session.expire_all()
        assert db.session.get(Delivery, dropped).status == DeliveryStatus.FAILED
        assert db.session.get(Delivery, opened).status == DeliveryStatus.SENT
        sub = db.session.get(Subscriber, sub_id)
        assert sub.next_position == 2 and sub.next_send_at is not None


def test_the_dashboard_counts_held_lessons_and_it_arrived_settles_one_audited(app, admin):
    with app.app_context():
        sub_id, waiting = held_subscriber("waiting@example.com",
                                          claimed_minutes_ago=60)  # past the window
        held_subscriber("recent@example.com")
    html = admin.get("/admin/dashboard").get_data(as_text=True)
    assert "lessons held (unconfirmed)" in html and "2 (1 waiting for you)" in html
    assert "1 lesson held" in html
    page = admin.get("/admin/deliveries?status=unconfirmed").get_data(as_text=True)
    assert "It arrived" in page and "Send it again" in page
    response = admin.post("/admin/deliveries/arrived",
                          data={"csrf_token": csrf_from(page), "id": str(waiting)},
                          follow_redirects=True)
    assert "1 delivery was marked sent" in response.get_data(as_text=True)
    with app.app_context():
        d = db.session.get(Delivery, waiting)
        assert d.status == DeliveryStatus.SENT and "it arrived" in d.error
        assert db.session.get(Subscriber, sub_id).next_position == 2
        entry = db.session.scalar(db.select(AuditEntry).where(AuditEntry.subscriber_id == sub_id))
        assert entry is not None and entry.action == "arrived"


def test_a_bulk_resend_to_finished_subscribers_is_sent_and_reported(app, admin, outbox):
    with app.app_context():
        ids = []
        for i in range(3):
            sub = add_subscriber(f"done{i}@example.com", status=Status.FINISHED)
            ids.append(add_delivery(sub.id, 1, DeliveryStatus.FAILED, attempts=5,
                                    error="HTTP 400: refused"))
        gone = add_subscriber("gone@example.com", status=Status.UNSUBSCRIBED)
        ids.append(add_delivery(gone.id, 1, DeliveryStatus.FAILED))
    page = admin.get("/admin/deliveries").get_data(as_text=True)
    response = admin.post("/admin/deliveries/resend", data={
        "csrf_token": csrf_from(page), "scope": "selected", "id": [str(i) for i in ids]},
        follow_redirects=True)
    text = response.get_data(as_text=True)
    assert "3 deliveries were requeued" in text and "1 other was not" in text
    assert "3 requeued: <strong>0 sent</strong>" in text
    with app.app_context():
        pipeline.tick()
    run_jobs(app)
    assert sorted(m["To"] for m in outbox) == [f"done{i}@example.com" for i in range(3)]
    text = admin.get("/admin/deliveries").get_data(as_text=True)
    assert "3 requeued: <strong>3 sent</strong>" in text
    with app.app_context():
        statuses = [db.session.get(Delivery, i).status for i in ids]
        assert statuses == [DeliveryStatus.SENT] * 3 + [DeliveryStatus.FAILED]
        # Finished they were, finished they stay.
        assert {s.status for s in db.session.scalars(db.select(Subscriber).where(
            Subscriber.email.like("done%")))} == {Status.FINISHED}


def test_unconfirmed_lessons_do_not_let_a_later_one_be_scheduled(app, admin):
    with app.app_context():
        sub_id, _ = held_subscriber("held@example.com")
        result = pipeline.tick()
        assert result.created == 0
        assert db.session.get(Subscriber, sub_id).next_position == 1


def test_what_happens_after_the_window_is_hold_or_resend_and_nothing_else(tmp_path):
    import pytest

    from course.config import ConfigError, load

    assert load({}, tmp_path)["UNCONFIRMED_WITHOUT_EVENTS"] == "hold"
    assert load({"UNCONFIRMED_WITHOUT_EVENTS": "Resend"}, tmp_path)[
        "UNCONFIRMED_WITHOUT_EVENTS"] == "resend"
    with pytest.raises(ConfigError, match="use hold or resend"):
        load({"UNCONFIRMED_WITHOUT_EVENTS": "drop"}, tmp_path)


def test_production_refuses_a_stale_window_a_live_send_job_could_outlast(tmp_path):
    import pytest

    from course.config import ConfigError, load

    env = {"MINICOURSE_ENV": "production", "SECRET_KEY": "kq3V9-zW1pX7mN0bR5tY8uC2eH6jL4aD",
           "BASE_URL": "https://course.example.org", "MAIL_FROM": "course@example.org",
           "MAIL_BACKEND": "smtp", "SMTP_HOST": "smtp.example.org"}
    assert load(env, tmp_path)["SEND_JOB_TIMEOUT"] == 600
    with pytest.raises(ConfigError, match="sent twice"):
        load({**env, "SENDING_STALE_SECONDS": "650"}, tmp_path)
    assert load({**env, "SENDING_STALE_SECONDS": "650", "SEND_JOB_TIMEOUT": "300"},
                tmp_path)["SENDING_STALE_SECONDS"] == 650


def test_the_watermark_waits_a_whole_window_after_events_passed_the_request(app):
    from course import unconfirmed

    with app.app_context():
        _, lagging = held_subscriber("lagging@example.com", claimed_minutes_ago=120)
        db.session.get(Delivery, lagging).request_id = 5
        db.session.commit()
        now = utcnow()
        assert unconfirmed.settle(now).requeued == 0  # no events at all: held
        # Events for a later request came ten minutes ago; the window is thirty.
        unconfirmed.raise_watermark(9, now - timedelta(minutes=10))
        unconfirmed.raise_watermark(7, now)  # never lowers it
        db.session.commit()
        assert unconfirmed.watermark()[-1][0] == 9
        assert unconfirmed.settle(now).requeued == 0
        assert unconfirmed.settle(now + timedelta(minutes=21)).requeued == 1
        assert db.session.get(Delivery, lagging).status == DeliveryStatus.QUEUED
