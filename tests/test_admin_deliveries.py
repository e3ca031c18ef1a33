"""The admin's deliveries needing attention, resending them, and the sending-paused banner."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from conftest import csrf_from, run_jobs
from flask import Flask
from flask.testing import FlaskClient
from test_admin import EMAIL, PASSWORD, add_admin, add_subscriber, post_login

from course import sendstate
from course.content import current_course
from course.extensions import db
from course.models import AuditEntry, Delivery, DeliveryStatus, Status
from course.timeutil import utcnow

ROW_RE = re.compile(r'<tr id="delivery-(\d+)"')
SHOWN_RE = re.compile(r'name="shown" value="(\d+)"')
CONFIRM = {"confirm": "not-delivered"}
EVIL = "<script>alert(1)</script>"



def add_delivery(subscriber_id: int, position: int, status: str, **fields: Any) -> int:
    lesson = current_course().lesson_at(position)
    assert lesson is not None
    delivery = Delivery(subscriber_id=subscriber_id, lesson_slug=lesson.slug,
                        position=position, status=status, **fields)
    db.session.add(delivery)
    db.session.commit()
    return delivery.id


def delivery(app: Flask, delivery_id: int) -> tuple[str, int, str]:
    """(status, attempts, error) as stored now."""
    with app.app_context():
        d = db.session.get(Delivery, delivery_id)
        assert d is not None
        return d.status, d.attempts, d.error


def listed(html: str) -> list[int]:
    return [int(i) for i in ROW_RE.findall(html)]


def token(client: FlaskClient, path: str = "/admin/deliveries") -> str:
    return csrf_from(client.get(path).get_data(as_text=True))


def resend_one(client: FlaskClient, delivery_id: int, **form: str):
    data = {"csrf_token": token(client), **form}
    return client.post(f"/admin/deliveries/{delivery_id}/resend", data=data,
                       follow_redirects=True)


def resend_many(client: FlaskClient, ids: list[int], **form: Any):
    data = {"csrf_token": token(client), "scope": "selected", "id": [str(i) for i in ids],
            **form}
    return client.post("/admin/deliveries/resend", data=data, follow_redirects=True)


@pytest.fixture
def problems(app: Flask) -> dict[str, int]:
    """One delivery in each state, with distinct times so the order is known."""
    now = utcnow()
    with app.app_context():
        ann = add_subscriber("ann@example.com").id
        bob = add_subscriber("bob@example.com").id
        ids = {
            "failed": add_delivery(ann, 1, DeliveryStatus.FAILED, attempts=1,
                                   claimed_at=now - timedelta(hours=3),
                                   error=f"400 from SendGrid: {EVIL} is not a valid address"),
            "unknown": add_delivery(ann, 2, DeliveryStatus.UNCONFIRMED, attempts=1,
                                    claimed_at=now - timedelta(hours=1),
                                    error="no answer from SendGrid: it may have been accepted"),
            "stuck": add_delivery(bob, 1, DeliveryStatus.SENDING, attempts=1,
                                  claimed_at=now - timedelta(minutes=12)),
            "busy": add_delivery(bob, 2, DeliveryStatus.SENDING, attempts=1,
                                 claimed_at=now - timedelta(minutes=1)),
            "sent": add_delivery(bob, 3, DeliveryStatus.SENT, attempts=1,
                                 claimed_at=now - timedelta(minutes=30), sent_at=now),
            "queued": add_delivery(ann, 3, DeliveryStatus.QUEUED),
        }
        ids["ann"], ids["bob"] = ann, bob
    return ids


# --- the list ---------------------------------------------------------------------------


def test_lists_failed_unknown_and_stuck_newest_first_with_the_message_escaped(
        app, admin, problems):
    resp = admin.get("/admin/deliveries")
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    html = resp.get_data(as_text=True)
    # Sent, queued and a delivery a worker is sending right now are not problems.
    assert listed(html) == [problems["stuck"], problems["unknown"], problems["failed"]]
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; is not a valid address" in html
    assert f'href="/admin/subscribers/{problems["ann"]}">ann@example.com</a>' in html
    with app.app_context():
        title = current_course().lesson_at(2).title
    assert f"2. {title}" in html
    assert "may already have been delivered" in html
    assert "Activity Feed" in html
    assert 'style=' not in html  # the CSP forbids inline styles


def test_a_long_provider_message_is_available_in_full(app, admin):
    text = "SendGrid said: " + "the from address is not verified; " * 20 + "THE END"
    with app.app_context():
        sub = add_subscriber("long@example.com").id
        add_delivery(sub, 1, DeliveryStatus.FAILED, error=text)
    html = admin.get("/admin/deliveries").get_data(as_text=True)
    assert "<details" in html and f">{text}</pre>" in html


@pytest.mark.parametrize("status, expected", [
    ("failed", ["failed"]), ("unconfirmed", ["unknown"]), ("sending", ["stuck"]),
    ("", ["stuck", "unknown", "failed"]), ("sent", ["stuck", "unknown", "failed"]),
])
def test_the_list_can_be_filtered_by_status(admin, problems, status, expected):
    html = admin.get(f"/admin/deliveries?status={status}").get_data(as_text=True)
    assert listed(html) == [problems[name] for name in expected]


def test_the_list_is_paginated_keeping_the_filter(make_app):
    app = make_app(ADMIN_PAGE_SIZE=2)
    add_admin(app)
    client = app.test_client()
    post_login(client, EMAIL, PASSWORD)
    now = utcnow()
    with app.app_context():
        sub = add_subscriber("many@example.com").id
        ids = [add_delivery(sub, p, DeliveryStatus.FAILED, claimed_at=now - timedelta(hours=p))
               for p in range(1, 6)]
    pages = [listed(client.get(f"/admin/deliveries?status=failed&page={n}")
                    .get_data(as_text=True)) for n in (1, 2, 3)]
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    html = client.get("/admin/deliveries?status=failed&page=2").get_data(as_text=True)
    assert 'href="/admin/deliveries?status=failed&amp;page=3"' in html


@pytest.mark.parametrize("path", ["/admin/deliveries", "/admin/deliveries?status=failed"])
def test_the_deliveries_page_requires_login(client, path):
    resp = client.get(path)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/admin/login?next=")


def test_resending_requires_login_even_with_a_valid_form_token(app, problems):
    client = app.test_client()
    form_token = token(client, "/admin/login")
    for path in (f"/admin/deliveries/{problems['failed']}/resend", "/admin/deliveries/resend",
                 "/admin/sending/resume"):
        resp = client.post(path, data={"csrf_token": form_token, "id": problems["failed"]})
        assert resp.status_code == 302 and resp.headers["Location"].startswith("/admin/login")
    assert delivery(app, problems["failed"])[0] == DeliveryStatus.FAILED


def test_nav_and_totals_link_to_the_deliveries_needing_attention(admin, problems):
    html = admin.get("/admin/subscribers").get_data(as_text=True)
    assert re.search(r'href="/admin/deliveries"[^>]*>Deliveries\s*<span class="count"[^>]*>3<',
                     html)
    assert 'href="/admin/deliveries?status=failed">failed deliveries</a>' in html
    assert 'href="/admin/deliveries?status=unconfirmed">unconfirmed deliveries</a>' in html


def test_nav_shows_no_count_when_nothing_needs_attention(admin):
    html = admin.get("/admin/deliveries").get_data(as_text=True)
    assert 'class="count"' not in html
    assert "Nothing needs attention" in html


# --- resending --------------------------------------------------------------------------


def test_resending_a_failed_delivery_requeues_it_from_scratch(app, admin, problems):
    resp = resend_one(admin, problems["failed"])
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "1 delivery was requeued" in html and "tick" in html
    assert delivery(app, problems["failed"]) == (DeliveryStatus.QUEUED, 0, "")
    assert problems["failed"] not in listed(html)


def test_a_resent_delivery_goes_out_with_the_next_tick(app, admin, outbox):
    with app.app_context():
        sub = add_subscriber("again@example.com", next_position=2, next_send_at=None).id
        failed = add_delivery(sub, 1, DeliveryStatus.FAILED, attempts=3, error="413 too large")
    resend_one(admin, failed)
    run_jobs(app)  # the resend asked for a tick; the tick enqueues the send
    assert delivery(app, failed)[0] == DeliveryStatus.SENT
    assert [m["To"] for m in outbox] == ["again@example.com"]


def test_resending_selected_deliveries_leaves_the_others_alone(app, admin):
    with app.app_context():
        sub = add_subscriber("bulk@example.com").id
        ids = [add_delivery(sub, p, DeliveryStatus.FAILED, error="400 bad") for p in (1, 2, 3)]
    html = resend_many(admin, ids[:2]).get_data(as_text=True)
    assert "2 deliveries were requeued" in html
    assert [delivery(app, i)[0] for i in ids] == [DeliveryStatus.QUEUED] * 2 + [
        DeliveryStatus.FAILED]


def test_resend_all_shown_requeues_exactly_the_rows_on_the_page(make_app):
    app = make_app(ADMIN_PAGE_SIZE=2)
    add_admin(app)
    client = app.test_client()
    post_login(client, EMAIL, PASSWORD)
    now = utcnow()
    with app.app_context():
        sub = add_subscriber("shown@example.com").id
        ids = [add_delivery(sub, p, DeliveryStatus.FAILED, claimed_at=now - timedelta(hours=p))
               for p in (1, 2, 3)]
    page = client.get("/admin/deliveries").get_data(as_text=True)
    shown = SHOWN_RE.findall(page)
    assert [int(i) for i in shown] == ids[:2]
    resp = client.post("/admin/deliveries/resend", follow_redirects=True, data={
        "csrf_token": csrf_from(page), "scope": "shown", "shown": shown, "id": [str(ids[2])]})
    assert "2 deliveries were requeued" in resp.get_data(as_text=True)
    assert [delivery(app, i)[0] for i in ids] == [DeliveryStatus.QUEUED] * 2 + [
        DeliveryStatus.FAILED]


def test_nothing_selected_is_refused_with_a_message(admin, problems):
    html = resend_many(admin, []).get_data(as_text=True)
    assert "tick the deliveries to resend first" in html


@pytest.mark.parametrize("name", ["unknown", "stuck"])
def test_a_maybe_delivered_one_is_resent_only_with_the_confirmation(app, admin, problems, name):
    before = delivery(app, problems[name])
    html = resend_one(admin, problems[name]).get_data(as_text=True)
    assert "Nothing was resent" in html and "I checked: it was not delivered" in html
    assert delivery(app, problems[name]) == before
    html = resend_one(admin, problems[name], confirm="yes please").get_data(as_text=True)
    assert delivery(app, problems[name]) == before  # only the checkbox's value counts
    html = resend_one(admin, problems[name], **CONFIRM).get_data(as_text=True)
    assert "1 delivery was requeued" in html
    assert delivery(app, problems[name]) == (DeliveryStatus.QUEUED, 0, "")


def test_a_bulk_resend_including_an_unknown_one_changes_nothing_without_confirmation(
        app, admin, problems):
    ids = [problems["failed"], problems["unknown"]]
    html = resend_many(admin, ids).get_data(as_text=True)
    assert "Nothing was resent: 1 delivery may already have been delivered" in html
    assert [delivery(app, i)[0] for i in ids] == [DeliveryStatus.FAILED, DeliveryStatus.UNCONFIRMED]
    with app.app_context():
        assert db.session.scalars(db.select(AuditEntry)).all() == []  # refused: no entry
    html = resend_many(admin, ids, **CONFIRM).get_data(as_text=True)
    assert "2 deliveries were requeued" in html
    assert [delivery(app, i)[0] for i in ids] == [DeliveryStatus.QUEUED] * 2
    # Each resend is in the subscriber's audit log, with who did it and what it was.
    with app.app_context():
        entries = db.session.scalars(db.select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [(e.subscriber_id, e.action, e.admin_email, json.loads(e.detail))
                for e in entries] == [
            (problems["ann"], "resend", EMAIL, {"position": 1, "was": "failed"}),
            (problems["ann"], "resend", EMAIL, {"position": 2, "was": "unconfirmed"}),
        ]


@pytest.mark.parametrize("name", ["sent", "queued", "busy"])
def test_deliveries_not_needing_attention_cannot_be_resent(app, admin, problems, name):
    """A sent one would go out twice; one a worker is sending now could too."""
    before = delivery(app, problems[name])
    html = resend_one(admin, problems[name], **CONFIRM).get_data(as_text=True)
    assert "Nothing was requeued" in html
    html = resend_many(admin, [problems[name]], **CONFIRM).get_data(as_text=True)
    assert "Nothing was requeued" in html
    assert delivery(app, problems[name]) == before


def test_a_mixed_selection_says_how_many_were_not_requeued(app, admin, problems):
    html = resend_many(admin, [problems["failed"], problems["sent"]]).get_data(as_text=True)
    assert "1 delivery was requeued" in html and "1 other was not" in html
    assert delivery(app, problems["sent"])[0] == DeliveryStatus.SENT


@pytest.mark.parametrize("delivery_id", ["424242", str(2**31), "9" * 30])
def test_resending_a_missing_delivery_is_a_404(admin, delivery_id):
    resp = admin.post(f"/admin/deliveries/{delivery_id}/resend",
                      data={"csrf_token": token(admin)})
    assert resp.status_code == 404


def test_junk_ids_in_a_bulk_resend_are_ignored(app, admin, problems):
    html = resend_many(admin, [], id=["x", "-1", "9" * 30, "²", str(problems["failed"])]
                       ).get_data(as_text=True)
    assert "1 delivery was requeued" in html
    assert delivery(app, problems["failed"])[0] == DeliveryStatus.QUEUED


def test_resend_without_a_csrf_token_is_refused(app, admin, problems):
    assert admin.post(f"/admin/deliveries/{problems['failed']}/resend").status_code == 400
    resp = admin.post("/admin/deliveries/resend", data={"id": str(problems["failed"])})
    assert resp.status_code == 400
    assert delivery(app, problems["failed"])[0] == DeliveryStatus.FAILED


def test_resend_returns_to_the_page_it_came_from_and_nowhere_else(admin, problems):
    for nxt, expected in [("/admin/deliveries?status=failed", "/admin/deliveries?status=failed"),
                          ("https://evil.example/", "/admin/deliveries")]:
        resp = admin.post(f"/admin/deliveries/{problems['failed']}/resend",
                          data={"csrf_token": token(admin), "next": nxt})
        assert resp.status_code == 302 and resp.headers["Location"] == expected
        assert resp.headers["Cache-Control"] == "no-store"


def test_resending_while_paused_says_it_waits_for_the_resume(app, admin, problems):
    with app.app_context():
        sendstate.pause("the mail provider refused our credentials (401)")
    html = resend_one(admin, problems["failed"]).get_data(as_text=True)
    assert "sending is paused: they go out once it resumes" in html


# --- the subscriber page ----------------------------------------------------------------


def test_subscriber_page_shows_errors_and_offers_a_resend_for_problems_only(
        app, admin, problems):
    path = f"/admin/subscribers/{problems['ann']}"
    html = admin.get(path).get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; is not a valid address" in html
    assert EVIL not in html
    # The subscriber page resends through its own (audited) action, by lesson position.
    unknown_row = re.search(r'<tr id="lesson-2">(.*?)</tr>', html, re.S).group(1)
    assert "I checked: it was not delivered" in unknown_row
    failed_row = re.search(r'<tr id="lesson-1">(.*?)</tr>', html, re.S).group(1)
    assert "I checked" not in failed_row
    assert f'action="/admin/subscribers/{problems["ann"]}/resend"' in failed_row
    resp = admin.post(f"/admin/deliveries/{problems['failed']}/resend",
                      data={"csrf_token": csrf_from(html), "next": path})
    assert resp.headers["Location"] == path


def test_a_subscriber_id_too_big_for_the_database_is_a_404(admin):
    assert admin.get("/admin/subscribers/" + "9" * 30).status_code == 404


def test_a_resend_for_an_unsubscribed_subscriber_is_flagged(app, admin):
    with app.app_context():
        sub = add_subscriber("gone@example.com", status=Status.UNSUBSCRIBED).id
        add_delivery(sub, 1, DeliveryStatus.FAILED, error="400")
    html = admin.get("/admin/deliveries").get_data(as_text=True)
    assert "now unsubscribed: it cannot be resent" in html


# --- sending paused ---------------------------------------------------------------------

REASON = "the mail provider refused our credentials (401 <b>bad key</b>)"


def test_no_paused_banner_while_sending_runs(admin):
    assert "Sending is paused" not in admin.get("/admin/subscribers").get_data(as_text=True)


def test_the_paused_banner_shows_on_every_admin_page_with_the_reason(app, admin, problems):
    with app.app_context():
        sendstate.pause(REASON)
        since = sendstate.paused()["since"][:16].replace("T", " ")
    for path in ("/admin/subscribers", "/admin/deliveries", f"/admin/subscribers/{problems['ann']}",
                 "/admin/outbox", "/admin/subscribers/424242"):
        resp = admin.get(path)
        html = resp.get_data(as_text=True)
        assert "Sending is paused" in html, path
        assert "(401 &lt;b&gt;bad key&lt;/b&gt;)" in html and "<b>bad key" not in html
        assert f"{since} UTC" in html
        assert "SENDGRID_API_KEY" in html and "restart the workers" in html
        assert "resumes by itself" in html
        assert 'action="/admin/sending/resume"' in html
    # Not for someone who is not signed in.
    assert "Sending is paused" not in app.test_client().get("/admin/login").get_data(as_text=True)


def test_the_banner_names_the_smtp_settings_when_mail_goes_by_smtp(make_app):
    app = make_app(MAIL_BACKEND="smtp", SMTP_HOST="localhost")
    add_admin(app)
    client = app.test_client()
    post_login(client, EMAIL, PASSWORD)
    with app.app_context():
        sendstate.pause("SMTP login refused")
    html = client.get("/admin/subscribers").get_data(as_text=True)
    assert "SMTP_PASSWORD" in html and "SMTP login refused" in html


def test_resume_now_lifts_the_pause_and_the_banner(app, admin):
    with app.app_context():
        sendstate.pause(REASON)
    page = admin.get("/admin/deliveries?status=failed").get_data(as_text=True)
    resp = admin.post("/admin/sending/resume", data={
        "csrf_token": csrf_from(page), "next": "/admin/deliveries?status=failed"})
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/admin/deliveries?status=failed"
    html = admin.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Sending resumed" in html and "Sending is paused" not in html
    with app.app_context():
        assert sendstate.paused() is None


def test_resume_without_a_csrf_token_keeps_the_pause(app, admin):
    with app.app_context():
        sendstate.pause(REASON)
    assert admin.post("/admin/sending/resume").status_code == 400
    with app.app_context():
        assert sendstate.paused() is not None


def test_resume_when_not_paused_changes_nothing(admin):
    resp = admin.post("/admin/sending/resume", data={"csrf_token": token(admin)},
                      follow_redirects=True)
    assert "Sending was not paused." in resp.get_data(as_text=True)


def test_resend_hands_exactly_the_requeued_rows_to_the_audit_before_committing(app, problems):
    """A delivery that changed state after the admin's page was drawn is not requeued, and
    so not audited: the audit names what the UPDATE changed, not what was asked for."""
    from course.sending import resend

    seen: list[tuple[int, int, int]] = []
    with app.app_context():
        count = resend([problems["failed"], problems["sent"], problems["queued"]],
                       before_commit=seen.extend)
    assert count == 1
    assert seen == [(problems["failed"], problems["ann"], 1)]
    assert delivery(app, problems["failed"])[0] == DeliveryStatus.QUEUED
