"""A newcomer's whole journey in a real browser, from the landing page back to re-joining.

Runs on both databases: one journey takes a few seconds, and the pages touch every
status change a subscriber goes through, which is where the two databases could differ.
"""

from __future__ import annotations

import re

from flask import Flask
from playwright.sync_api import expect

from course.extensions import db
from course.models import Delivery, DeliveryStatus, Status, Subscriber

from .conftest import Site

EMAIL = "newcomer@example.com"
BROWSER_ZONE = "America/Chicago"  # not the course's default (UTC): proves the script ran


def subscriber(app: Flask, email: str = EMAIL) -> Subscriber:
    with app.app_context():
        sub = db.session.scalar(db.select(Subscriber).where(Subscriber.email == email))
        assert sub is not None
        db.session.expunge(sub)
        return sub


def deliveries(app: Flask, sub_id: int) -> list[Delivery]:
    with app.app_context():
        found = list(db.session.scalars(
            db.select(Delivery).where(Delivery.subscriber_id == sub_id).order_by(Delivery.id)))
        for d in found:
            db.session.expunge(d)
        return found


def test_newcomer_signs_up_confirms_reads_marks_done_unsubscribes_and_rejoins(
    site: Site,
) -> None:
    page = site.page(timezone_id=BROWSER_ZONE)
    h1 = page.get_by_role("heading", level=1)

    # The landing page: the time zone is filled in by the script, the form is labelled.
    page.goto("/")
    expect(page.locator("input[name=timezone]")).to_have_value(BROWSER_ZONE)
    site.check(page, "01-landing")
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("First name (optional)").fill("Nia")
    page.get_by_label(re.compile(r"^Yes, please email me")).check()
    page.get_by_role("button", name="Send me lesson 1").click()
    expect(h1).to_have_text("Check your inbox")
    expect(page.locator("main")).to_contain_text(f"sending an email to {EMAIL}")
    site.check(page, "02-check-inbox")

    # The signup's job makes the subscriber and sends the confirmation.
    site.jobs()
    sub = subscriber(site.app)
    assert (sub.status, sub.name, sub.timezone) == (Status.PENDING, "Nia", BROWSER_ZONE)
    assert "HeadlessChrome" in sub.consent_user_agent

    # The confirmation email's link confirms at once: the page submits itself.
    confirmation = site.mailbox.one_new(EMAIL)
    page.goto(site.mailbox.link(confirmation, "confirm"))
    expect(h1).to_have_text(re.compile(r"^Welcome to "))
    site.check(page, "04-welcome")
    assert subscriber(site.app).status == Status.ACTIVE

    # Lesson 1 arrives; read it in the browser, then mark it done from the email's link.
    site.jobs()
    lesson = site.mailbox.one_new(EMAIL)
    assert lesson["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    page.goto(site.mailbox.link(lesson, "l"))
    expect(page.locator(".eyebrow")).to_have_text(re.compile(r"^Lesson 1 of \d+$"))
    site.check(page, "05-lesson")
    [first] = deliveries(site.app, sub.id)
    assert (first.position, first.status, first.completed_at) == (1, DeliveryStatus.SENT, None)
    page.goto(site.mailbox.link(lesson, "done"))
    expect(h1).to_have_text(re.compile(r"^Lesson 1 done"))
    site.check(page, "07-progress")
    assert deliveries(site.app, sub.id)[0].completed_at is not None

    # The mail provider's one-click POST (RFC 8058), from a client with no cookies.
    unsubscribe_url = site.mailbox.link(lesson, "u")
    assert lesson["List-Unsubscribe"].strip() == f"<{unsubscribe_url}>"
    response = site.context().request.post(unsubscribe_url,
                                           form={"List-Unsubscribe": "One-Click"})
    assert response.status == 200
    assert subscriber(site.app).status == Status.UNSUBSCRIBED

    # The unsubscribe link now says so and offers to join again, the form filled in.
    page.goto(unsubscribe_url)
    expect(h1).to_have_text("You’re unsubscribed")
    expect(page.get_by_label("Email address")).to_have_value(EMAIL)
    site.check(page, "09-unsubscribed")
    page.get_by_label(re.compile(r"^Yes, please email me")).check()
    page.get_by_role("button", name="Join again").click()
    expect(h1).to_have_text("Check your inbox")
    site.jobs()
    rejoined = subscriber(site.app)
    assert (rejoined.id, rejoined.status, rejoined.timezone) == (sub.id, Status.PENDING,
                                                                BROWSER_ZONE)
    assert "/confirm/" in site.mailbox.link(site.mailbox.one_new(EMAIL), "confirm")
