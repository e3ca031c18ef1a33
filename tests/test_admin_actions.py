"""Actions on one subscriber from the admin: each a CSRF-protected POST that does what it
says, or explains why not and changes nothing, and each leaves one audit entry."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from conftest import csrf_from, run_jobs
from flask import Flask
from flask.testing import FlaskClient
from test_admin import EMAIL, PASSWORD, add_admin, post_login

from course import pipeline
from course.content import current_course
from course.extensions import db
from course.models import (
    AdminUser,
    AuditEntry,
    Delivery,
    DeliveryStatus,
    Event,
    EventKind,
    OutgoingWebhook,
    Status,
    Subscriber,
)
from course.timeutil import utcnow
from tests.helpers import add_subscriber

HOOK_URL = "http://127.0.0.1:9/hook"  # never called: the tests look at the queued rows



def post(admin: FlaskClient, sub_id: int, action: str, **form: str):
    page = admin.get(f"/admin/subscribers/{sub_id}").get_data(as_text=True)
    return admin.post(f"/admin/subscribers/{sub_id}/{action}",
                      data={"csrf_token": csrf_from(page), **form})


def flashed(admin: FlaskClient, res: Any) -> str:
    assert res.status_code == 302, res.get_data(as_text=True)
    return admin.get(res.location).get_data(as_text=True)


def audit(app: Flask, sub_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(action, admin email, detail) of every entry about the subscriber, oldest first."""
    with app.app_context():
        rows = db.session.scalars(db.select(AuditEntry).where(
            AuditEntry.subscriber_id == sub_id).order_by(AuditEntry.id)).all()
        return [(e.action, e.admin_email, json.loads(e.detail)) for e in rows]


def add_delivery(sub_id: int, position: int, status: str, **fields: Any) -> Delivery:
    lesson = current_course().lesson_at(position)
    assert lesson is not None
    d = Delivery(subscriber_id=sub_id, lesson_slug=lesson.slug, position=position,
                 status=status, **fields)
    db.session.add(d)
    db.session.commit()
    return d


def subscriber(app: Flask, sub_id: int) -> Subscriber:
    with app.app_context():
        sub = db.session.get(Subscriber, sub_id)
        db.session.expunge(sub)
        return sub


def deliveries(app: Flask, sub_id: int) -> list[tuple[int, int, str]]:
    with app.app_context():
        return [(d.id, d.position, d.status) for d in db.session.scalars(
            db.select(Delivery).where(Delivery.subscriber_id == sub_id).order_by(Delivery.id))]


# --- pause and resume ---------------------------------------------------------------------


def test_pause_holds_back_the_queued_lesson_and_resume_picks_up_at_the_send_hour(app, outbox):
    add_admin(app)
    with time_machine.travel(datetime(2026, 6, 3, 12, 0, tzinfo=UTC), tick=False):
        admin = app.test_client()  # signed in on the travelled clock
        assert post_login(admin, EMAIL, PASSWORD).status_code == 302
        with app.app_context():
            sub_id = add_subscriber("pause@example.com", timezone="Europe/Paris").id
            pipeline.tick(enqueue=lambda ids: None)
        res = post(admin, sub_id, "pause")
        assert res.status_code == 302
        with app.app_context():
            sub = db.session.get(Subscriber, sub_id)
            assert (sub.status, sub.next_send_at) == (Status.PAUSED, None)
            assert db.session.scalar(db.select(Delivery.status)) == DeliveryStatus.CANCELLED
            pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
        assert outbox == []
        assert "Resume lessons" in admin.get(f"/admin/subscribers/{sub_id}").get_data(True)
        assert post(admin, sub_id, "resume").status_code == 302
        with app.app_context():
            sub = db.session.get(Subscriber, sub_id)
            # 12:00 UTC is 14:00 in Paris, past the 09:00 send hour: tomorrow 09:00 CEST.
            assert sub.status == Status.ACTIVE
            assert sub.next_send_at == datetime(2026, 6, 4, 7, 0, tzinfo=UTC)
    assert audit(app, sub_id) == [
        ("pause", EMAIL, {"cancelled": 1}),
        ("resume", EMAIL, {"next_send_at": "2026-06-04T07:00:00Z"}),
    ]
    with time_machine.travel(datetime(2026, 6, 4, 7, 0, 30, tzinfo=UTC), tick=False):
        with app.app_context():
            pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
    assert [m["Subject"][:6] for m in outbox] == ["Day 1:"]


def test_only_active_subscribers_pause_and_only_paused_ones_resume(app, admin):
    with app.app_context():
        gone = add_subscriber("gone@example.com", status=Status.UNSUBSCRIBED).id
    res = post(admin, gone, "pause")
    assert "Only an active subscriber can be paused." in flashed(admin, res)
    with app.app_context():
        assert db.session.get(Subscriber, gone).status == Status.UNSUBSCRIBED
    assert "Only a paused subscriber can be resumed." in flashed(admin, post(admin, gone,
                                                                             "resume"))
    with app.app_context():
        assert db.session.get(Subscriber, gone).status == Status.UNSUBSCRIBED
    assert audit(app, gone) == []


# --- CSRF, login, unknown subscribers ------------------------------------------------------

ACTIONS = ["pause", "resume", "send-next", "resend", "move", "unsubscribe", "erase", "export"]


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_refuses_a_missing_or_wrong_csrf_token_and_records_nothing(
        app, admin, action):
    with app.app_context():
        sub_id = add_subscriber("csrf@example.com", name="Cee", consent_ip="192.0.2.9").id
        add_delivery(sub_id, 1, DeliveryStatus.FAILED)
    form = {"position": "1", "confirm": "erase"}
    url = f"/admin/subscribers/{sub_id}/{action}"
    assert admin.post(url, data=form).status_code == 400
    assert admin.post(url, data={**form, "csrf_token": "forged"}).status_code == 400
    assert app.test_client().post(url, data=form).status_code in (302, 400)
    assert audit(app, sub_id) == []
    sub = subscriber(app, sub_id)
    assert (sub.status, sub.email, sub.name) == (Status.ACTIVE, "csrf@example.com", "Cee")
    assert deliveries(app, sub_id)[0][2] == DeliveryStatus.FAILED
    assert admin.get(url).status_code == 405  # a GET never acts


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_on_an_unknown_subscriber_is_a_404(app, admin, action):
    with app.app_context():
        sub_id = add_subscriber("real@example.com").id
    page = admin.get(f"/admin/subscribers/{sub_id}").get_data(as_text=True)
    for missing in (sub_id + 1000, 10**12):
        res = admin.post(f"/admin/subscribers/{missing}/{action}",
                         data={"csrf_token": csrf_from(page), "position": "1",
                               "confirm": "erase"})
        assert res.status_code == 404
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(AuditEntry)) == 0


# --- send the next lesson now ---------------------------------------------------------------


def test_send_next_now_sends_the_lesson_through_the_worker_ahead_of_its_schedule(
        app, admin, outbox):
    with app.app_context():
        later = utcnow() + timedelta(days=2)
        sub_id = add_subscriber("eager@example.com", next_position=2, next_send_at=later).id
        add_delivery(sub_id, 1, DeliveryStatus.SENT, sent_at=utcnow() - timedelta(days=1))
    res = post(admin, sub_id, "send-next")
    assert "Lesson 2, “When your life suits them as it is”, is due now." in flashed(
        admin, res)
    assert subscriber(app, sub_id).next_send_at <= utcnow()
    run_jobs(app)  # the action asked for a tick; the tick enqueues the send
    assert [(m["To"], m["Subject"][:6]) for m in outbox] == [("eager@example.com", "Day 2:")]
    sub = subscriber(app, sub_id)
    assert sub.next_position == 3 and sub.next_send_at > utcnow()
    assert [d[1:] for d in deliveries(app, sub_id)] == [(1, "sent"), (2, "sent")]
    assert audit(app, sub_id) == [
        ("send_next", EMAIL, {"position": 2, "lesson": current_lesson_slug(app, 2)})]


def current_lesson_slug(app: Flask, position: int) -> str:
    with app.app_context():
        lesson = current_course().lesson_at(position)
        assert lesson is not None
        return lesson.slug


@pytest.mark.parametrize(("status", "position", "delivered", "message"), [
    (Status.FINISHED, 11, None, "They have finished the course"),
    (Status.PAUSED, 2, None, "They are paused: resume them first"),
    (Status.UNSUBSCRIBED, 2, None, "They are unsubscribed"),
    (Status.ACTIVE, 11, None, "They have had every lesson"),
    (Status.ACTIVE, 2, DeliveryStatus.QUEUED, "Lesson 2 is already on its way (queued)."),
    (Status.ACTIVE, 2, DeliveryStatus.FAILED, "Lesson 2 failed earlier"),
    (Status.ACTIVE, 2, DeliveryStatus.SENT, "Lesson 2 was already sent (sent)"),
])
def test_send_next_now_where_it_makes_no_sense_says_why_and_changes_nothing(
        app, admin, outbox, status, position, delivered, message):
    with app.app_context():
        later = utcnow() + timedelta(days=2)
        sub_id = add_subscriber("later@example.com", status=status, next_position=position,
                                next_send_at=later if status == Status.ACTIVE else None).id
        if delivered:
            add_delivery(sub_id, position, delivered)
    before = subscriber(app, sub_id)
    page = flashed(admin, post(admin, sub_id, "send-next"))
    assert message in page and 'class="error flash"' in page
    after = subscriber(app, sub_id)
    assert (after.status, after.next_send_at, after.next_position) == (
        before.status, before.next_send_at, before.next_position)
    assert audit(app, sub_id) == []
    run_jobs(app)
    assert outbox == []


# --- resend a lesson ------------------------------------------------------------------------


def test_resending_a_sent_lesson_needs_a_tick_and_requeues_the_same_delivery_row(
        app, admin, outbox):
    with app.app_context():
        later = utcnow() + timedelta(days=2)
        sub_id = add_subscriber("again@example.com", next_position=2, next_send_at=later).id
        first = add_delivery(sub_id, 1, DeliveryStatus.SENT, attempts=1,
                             sent_at=utcnow() - timedelta(days=1)).id
    page = flashed(admin, post(admin, sub_id, "resend", position="1"))
    assert "Nothing was resent: lesson 1 was sent already." in page
    assert deliveries(app, sub_id) == [(first, 1, "sent")] and audit(app, sub_id) == []

    page = flashed(admin, post(admin, sub_id, "resend", position="1", confirm="send-again"))
    assert "Lesson 1 is queued to be sent once more." in page
    assert deliveries(app, sub_id) == [(first, 1, "queued")]
    run_jobs(app)
    assert [(m["To"], m["Subject"][:6]) for m in outbox] == [("again@example.com", "Day 1:")]
    assert deliveries(app, sub_id) == [(first, 1, "sent")]  # one row per lesson, still
    sub = subscriber(app, sub_id)
    assert (sub.next_position, sub.next_send_at) == (2, later)  # the course did not move
    assert audit(app, sub_id) == [
        ("resend", EMAIL, {"position": 1, "lesson": current_lesson_slug(app, 1),
                           "was": "sent"})]
    page = admin.get(f"/admin/subscribers/{sub_id}").get_data(as_text=True)
    assert "Queued lesson 1 to be sent again, although it had been sent" in page


def test_resend_of_failed_and_unknown_lessons_and_what_is_refused(app, admin):
    with app.app_context():
        sub_id = add_subscriber("mixed@example.com", next_position=4, next_send_at=None).id
        failed = add_delivery(sub_id, 1, DeliveryStatus.FAILED, error="550 refused").id
        unknown = add_delivery(sub_id, 2, DeliveryStatus.UNCONFIRMED).id
        busy = add_delivery(sub_id, 3, DeliveryStatus.SENDING, claimed_at=utcnow()).id
    assert "queued again (it was failed)" in flashed(admin, post(admin, sub_id, "resend",
                                                                 position="1"))
    assert "may already have been delivered" in flashed(
        admin, post(admin, sub_id, "resend", position="2"))
    assert "is already on its way (sending)" in flashed(
        admin, post(admin, sub_id, "resend", position="3", confirm="not-delivered"))
    assert "was never sent to them" in flashed(admin, post(admin, sub_id, "resend",
                                                            position="5"))
    assert "queued again (it was unconfirmed)" in flashed(
        admin, post(admin, sub_id, "resend", position="2", confirm="not-delivered"))
    assert deliveries(app, sub_id) == [(failed, 1, "queued"), (unknown, 2, "queued"),
                                       (busy, 3, "sending")]
    assert [(a, d["position"], d["was"]) for a, _, d in audit(app, sub_id)] == [
        ("resend", 1, "failed"), ("resend", 2, "unconfirmed")]


def test_a_lesson_is_resent_to_anyone_who_takes_mail_never_to_the_unsubscribed(app, admin):
    with app.app_context():
        gone = add_subscriber("gone@example.com", status=Status.UNSUBSCRIBED).id
        add_delivery(gone, 1, DeliveryStatus.FAILED)
        done = add_subscriber("done@example.com", status=Status.FINISHED).id
        add_delivery(done, 1, DeliveryStatus.FAILED)
    assert "They are unsubscribed: no lesson can be sent to them." in (
        flashed(admin, post(admin, gone, "resend", position="1")))
    assert deliveries(app, gone)[0][2] == "failed" and audit(app, gone) == []
    assert "queued again (it was failed)" in flashed(admin, post(admin, done, "resend",
                                                                 position="1"))
    assert deliveries(app, done)[0][2] == "queued"


# --- move to lesson N ---------------------------------------------------------------------


def test_move_to_a_later_lesson_cancels_what_was_queued_and_schedules_the_new_one(app, admin):
    with time_machine.travel(datetime(2026, 6, 3, 12, 0, tzinfo=UTC), tick=False):
        admin = app.test_client()
        assert post_login(admin, EMAIL, PASSWORD).status_code == 302
        with app.app_context():
            sub_id = add_subscriber("skip@example.com", timezone="Europe/Paris").id
            pipeline.tick(enqueue=lambda ids: None)  # lesson 1 is queued
        page = flashed(admin, post(admin, sub_id, "move", position="4"))
        assert "Moved: lesson 4 is their next lesson" in page
        sub = subscriber(app, sub_id)
        assert (sub.status, sub.next_position) == (Status.ACTIVE, 4)
        assert sub.next_send_at == datetime(2026, 6, 4, 7, 0, tzinfo=UTC)  # 09:00 in Paris
        assert [d[1:] for d in deliveries(app, sub_id)] == [(1, "cancelled")]
        assert audit(app, sub_id) == [("move", EMAIL, {"from": 1, "to": 4, "cancelled": 1})]
        # Back to lesson 1: it was cancelled, never sent, so it may go out after all.
        assert "Moved: lesson 1" in flashed(admin, post(admin, sub_id, "move", position="1"))
        assert subscriber(app, sub_id).next_position == 1


def test_move_a_finished_subscriber_back_to_an_unsent_lesson_makes_them_active(app, admin):
    with app.app_context():
        sub_id = add_subscriber("done@example.com", status=Status.FINISHED, next_position=11,
                                finished_at=utcnow()).id
        add_delivery(sub_id, 1, DeliveryStatus.SENT)
    page = flashed(admin, post(admin, sub_id, "move", position="1"))
    assert "Lesson 1 was already sent (sent)" in page
    assert subscriber(app, sub_id).status == Status.FINISHED
    assert "Moved: lesson 2" in flashed(admin, post(admin, sub_id, "move", position="2"))
    sub = subscriber(app, sub_id)
    assert (sub.status, sub.next_position, sub.finished_at) == (Status.ACTIVE, 2, None)
    assert sub.next_send_at is not None
    assert [a for a, _, _ in audit(app, sub_id)] == ["move"]


def test_move_of_a_paused_subscriber_waits_for_resume(app, admin):
    with app.app_context():
        sub_id = add_subscriber("resting@example.com", status=Status.PAUSED).id
    assert "once you resume them" in flashed(admin, post(admin, sub_id, "move", position="3"))
    sub = subscriber(app, sub_id)
    assert (sub.status, sub.next_position, sub.next_send_at) == (Status.PAUSED, 3, None)


@pytest.mark.parametrize("position", ["0", "11", "-1", "abc", "", "1.5", "9" * 30])
def test_move_to_a_lesson_that_does_not_exist_is_a_400_page_and_changes_nothing(
        app, admin, position):
    with app.app_context():
        sub_id = add_subscriber("typo@example.com", next_position=2).id
    res = post(admin, sub_id, "move", position=position)
    assert res.status_code == 400
    assert "the lesson number must be from 1 to 10" in res.get_data(as_text=True)
    assert post(admin, sub_id, "resend", position=position).status_code == 400
    assert subscriber(app, sub_id).next_position == 2
    assert audit(app, sub_id) == []


def test_moving_to_the_lesson_that_is_already_next_is_refused(app, admin):
    with app.app_context():
        sub_id = add_subscriber("same@example.com", next_position=3).id
    page = flashed(admin, post(admin, sub_id, "move", position="3"))
    assert "Lesson 3 is already their next lesson: nothing changed." in page
    assert audit(app, sub_id) == []


# --- unsubscribe ----------------------------------------------------------------------------


def test_unsubscribe_cancels_queued_lessons_and_tells_integrators(make_app):
    app = make_app(WEBHOOK_URLS=(HOOK_URL,), WEBHOOK_SECRET="s" * 32)
    add_admin(app)
    admin = app.test_client()
    assert post_login(admin, EMAIL, PASSWORD).status_code == 302
    with app.app_context():
        sub_id = add_subscriber("leaving@example.com").id
        add_delivery(sub_id, 1, DeliveryStatus.QUEUED)
    assert "Unsubscribed: they get no more mail." in flashed(admin, post(admin, sub_id,
                                                                         "unsubscribe"))
    sub = subscriber(app, sub_id)
    assert (sub.status, sub.next_send_at) == (Status.UNSUBSCRIBED, None)
    assert sub.unsubscribed_at is not None
    assert [d[2] for d in deliveries(app, sub_id)] == ["cancelled"]
    with app.app_context():
        assert db.session.scalar(db.select(Event.kind).where(
            Event.subscriber_id == sub_id)) == EventKind.UNSUBSCRIBE
        hook = json.loads(db.session.scalar(db.select(OutgoingWebhook.payload)))
    assert hook["type"] == "subscriber.unsubscribed"
    assert hook["data"]["subscriber"] == {"id": sub_id, "email": "leaving@example.com"}
    assert hook["data"]["source"] == "admin"  # not the subscriber's own link
    assert audit(app, sub_id) == [("unsubscribe", EMAIL, {"was": "active", "cancelled": 1})]
    # Again: nothing to do, nothing recorded.
    assert "They are unsubscribed already." in flashed(admin, post(admin, sub_id,
                                                                   "unsubscribe"))
    assert len(audit(app, sub_id)) == 1


# --- erase and export -----------------------------------------------------------------------

PERSONAL = ("ann.private@example.com", "Ann Private", "198.51.100.23",
            "Mozilla/5.0 (AnnPhone 12)", "Pacific/Auckland")


def add_ann(app: Flask) -> int:
    """An active subscriber with personal data in every place it can reach."""
    email, name, ip, agent, zone = PERSONAL
    with app.app_context():
        sub = add_subscriber(email, name=name, timezone=zone, consent_ip=ip,
                             consent_user_agent=agent, next_position=3,
                             confirmed_at=utcnow())
        sent = add_delivery(sub.id, 1, DeliveryStatus.SENT, sent_at=utcnow(),
                            provider_message_id="msg-1", opened_at=utcnow(), open_count=1)
        add_delivery(sub.id, 2, DeliveryStatus.FAILED,
                     error=f"550 5.1.1 <{email.upper()}>: mailbox unavailable")
        add_delivery(sub.id, 3, DeliveryStatus.QUEUED)
        db.session.add_all([
            Event(subscriber_id=sub.id, delivery_id=sent.id, kind=EventKind.OPEN,
                  user_agent=agent),
            Event(subscriber_id=sub.id, delivery_id=sent.id, kind=EventKind.CLICK,
                  url="https://example.org/guide", user_agent=agent),
        ])
        db.session.commit()
        return sub.id


def test_erase_needs_the_confirming_box(app, admin):
    sub_id = add_ann(app)
    page = flashed(admin, post(admin, sub_id, "erase"))
    assert "Nothing was erased: tick the box to confirm first." in page
    assert subscriber(app, sub_id).email == PERSONAL[0]
    assert audit(app, sub_id) == []


def test_erase_leaves_no_personal_data_and_the_export_of_an_erased_subscriber_has_none(
        make_app):
    app = make_app(WEBHOOK_URLS=(HOOK_URL,), WEBHOOK_SECRET="s" * 32)
    add_admin(app)
    admin = app.test_client()
    assert post_login(admin, EMAIL, PASSWORD).status_code == 302
    sub_id = add_ann(app)
    with app.app_context():  # an earlier webhook about Ann, with her address and name
        from course import webhooks_out
        webhooks_out.emit("subscriber.confirmed", webhooks_out.subscriber_data(
            sub_id, PERSONAL[0], name=PERSONAL[1], timezone=PERSONAL[4]))
        db.session.commit()

    page = flashed(admin, post(admin, sub_id, "erase", confirm="erase"))
    assert "Erased: their address, name and consent details are gone" in page
    placeholder = f"erased-{sub_id}@erased.invalid"
    with app.app_context():
        sub = db.session.get(Subscriber, sub_id)
        row = {c.name: getattr(sub, c.key) for c in Subscriber.__table__.columns}
        text = json.dumps(row, default=str).lower()
        for value in PERSONAL:
            assert value.lower() not in text
        assert (sub.email, sub.name, sub.consent_ip, sub.consent_user_agent) == (
            placeholder, "", "", "")
        assert (sub.status, sub.next_send_at) == (Status.UNSUBSCRIBED, None)
        statuses = [d.status for d in sub.deliveries]
        assert statuses == ["sent", "failed", "cancelled"]  # anonymous history stays
        assert PERSONAL[0] not in " ".join(d.error for d in sub.deliveries).lower()
        agents = db.session.scalars(db.select(Event.user_agent).where(
            Event.subscriber_id == sub_id)).all()
        assert len(agents) == 3 and set(agents) == {""}  # open, click, unsubscribe
        payloads = " ".join(db.session.scalars(db.select(OutgoingWebhook.payload)))
        assert placeholder in payloads
        for value in PERSONAL:
            assert value.lower() not in payloads.lower()
    entries = audit(app, sub_id)
    assert entries == [("erase", EMAIL, {"was": "active", "cancelled": 1})]
    assert PERSONAL[0] not in json.dumps(entries)

    page = admin.get(f"/admin/subscribers/{sub_id}").get_data(as_text=True)
    assert "personal data was erased" in page and "Erase personal data" not in page
    for action in ("send-next", "move", "unsubscribe", "erase"):
        res = post(admin, sub_id, action, position="4", confirm="erase")
        assert "Their personal data was erased" in flashed(admin, res)

    res = post(admin, sub_id, "export")
    body = res.get_data(as_text=True)
    for value in PERSONAL:
        assert value.lower() not in body.lower()
    data = json.loads(body)
    assert data["subscriber"]["email"] == placeholder and data["subscriber"]["erased"]
    assert len(data["deliveries"]) == 3
    assert [a for a, _, _ in audit(app, sub_id)] == ["erase", "export"]


def test_export_is_a_json_download_of_everything_held_about_them(app, admin):
    sub_id = add_ann(app)
    res = post(admin, sub_id, "export")
    assert res.status_code == 200
    assert res.mimetype == "application/json"
    assert res.headers["Content-Disposition"] == (
        f'attachment; filename="subscriber-{sub_id}.json"')
    assert res.headers["Cache-Control"] == "no-store"
    data = json.loads(res.get_data(as_text=True))
    email, name, ip, agent, zone = PERSONAL
    assert data["subscriber"]["email"] == email and data["subscriber"]["name"] == name
    assert data["subscriber"]["timezone"] == zone and not data["subscriber"]["erased"]
    assert data["consent"]["ip"] == ip and data["consent"]["user_agent"] == agent
    assert [(d["position"], d["status"]) for d in data["deliveries"]] == [
        (1, "sent"), (2, "failed"), (3, "queued")]
    assert data["deliveries"][0]["provider_message_id"] == "msg-1"
    assert "mailbox unavailable" in data["deliveries"][1]["error"]
    assert sorted(e["kind"] for e in data["events"]) == ["click", "open"]
    assert [a["action"] for a in data["audit"]] == ["export"]
    assert EMAIL not in res.get_data(as_text=True)  # the admin's address is not theirs
    assert audit(app, sub_id) == [("export", EMAIL, {"deliveries": 3, "events": 2})]
    assert subscriber(app, sub_id).status == Status.ACTIVE  # exporting changes nothing else


# --- the log on the subscriber page ------------------------------------------------------


def test_the_subscriber_page_shows_the_log_newest_first_with_who_did_what(app, admin):
    add_admin(app, "second@example.com", PASSWORD)
    other = app.test_client()
    assert post_login(other, "second@example.com", PASSWORD).status_code == 302
    with app.app_context():
        sub_id = add_subscriber("logged@example.com", timezone="Europe/Berlin").id
    page = admin.get(f"/admin/subscribers/{sub_id}").get_data(as_text=True)
    assert "No admin has acted on this subscriber yet." in page
    assert post(admin, sub_id, "pause").status_code == 302
    assert post(other, sub_id, "move", position="5").status_code == 302
    assert post(admin, sub_id, "resume").status_code == 302
    page = admin.get(f"/admin/subscribers/{sub_id}").get_data(as_text=True)
    log = page[page.index("Action log"):]
    resumed, moved, paused = (log.index(words) for words in (
        "Resumed lessons; the next one was due", "Moved from lesson 1 to lesson 5",
        "Paused lessons"))
    assert resumed < moved < paused
    assert log.count("second@example.com") == 1 and log.count(EMAIL) == 2
    with app.app_context():
        ids = {u.email: u.id for u in db.session.scalars(db.select(AdminUser))}
        assert [e.admin_id for e in db.session.scalars(
            db.select(AuditEntry).order_by(AuditEntry.id))] == [
            ids[EMAIL], ids["second@example.com"], ids[EMAIL]]


def test_the_lessons_table_offers_a_resend_that_fits_each_delivery(app, admin):
    """Failed: plain resend. Unknown or stuck: only with "I checked". Sent: "Send again"
    behind its own box. Queued or being sent right now: nothing. Taking no mail: nothing."""
    now = utcnow()
    with app.app_context():
        ann = add_subscriber("ann@example.com").id
        add_delivery(ann, 1, DeliveryStatus.FAILED, error="<b>bad</b>")
        add_delivery(ann, 2, DeliveryStatus.UNCONFIRMED)
        add_delivery(ann, 3, DeliveryStatus.QUEUED)
        bob = add_subscriber("bob@example.com").id
        add_delivery(bob, 1, DeliveryStatus.SENDING, claimed_at=now - timedelta(minutes=12))
        add_delivery(bob, 2, DeliveryStatus.SENDING, claimed_at=now - timedelta(minutes=1))
        add_delivery(bob, 3, DeliveryStatus.SENT, sent_at=now)
        cy = add_subscriber("cy@example.com", status=Status.BOUNCED).id
        add_delivery(cy, 1, DeliveryStatus.FAILED)

    def row(sub_id: int, position: int) -> str:
        html = admin.get(f"/admin/subscribers/{sub_id}").get_data(as_text=True)
        assert "<b>bad</b>" not in html
        start = html.index(f'<tr id="lesson-{position}">')
        return html[start:html.index("</tr>", start)]

    form = 'action="/admin/subscribers/{}/resend"'
    failed, unknown, queued = (row(ann, n) for n in (1, 2, 3))
    assert form.format(ann) in failed and "I checked" not in failed
    assert 'name="position" value="1"' in failed
    assert form.format(ann) in unknown and "I checked: it was not delivered" in unknown
    assert "resend" not in queued
    stuck, busy, sent = (row(bob, n) for n in (1, 2, 3))
    assert form.format(bob) in stuck and "I checked: it was not delivered" in stuck
    assert "resend" not in busy
    assert "<summary>Send again</summary>" in sent and "Yes, send lesson 3 again" in sent
    assert "resend" not in row(cy, 1)


def test_pausing_calls_off_a_queued_resend_and_the_lesson_stays_sent(app, admin, outbox):
    with app.app_context():
        sub_id = add_subscriber("change@example.com", next_position=2,
                                next_send_at=utcnow() + timedelta(days=1)).id
        first = add_delivery(sub_id, 1, DeliveryStatus.SENT, sent_at=utcnow()).id
    post(admin, sub_id, "resend", position="1", confirm="send-again")
    assert deliveries(app, sub_id) == [(first, 1, "queued")]
    assert "Paused" in flashed(admin, post(admin, sub_id, "pause"))
    assert deliveries(app, sub_id) == [(first, 1, "sent")]
    with app.app_context():
        assert db.session.get(Delivery, first).error == "resend called off: paused by an admin"
    run_jobs(app)
    assert outbox == []
