"""The course owner in a real browser: sign in, find a subscriber, see how far they got,
and pause them."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from course.admin_accounts import create_admin
from course.content import current_course
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Status, Subscriber
from course.timeutil import utcnow

from .conftest import Site

ADMIN = "owner@example.com"
PASSWORD = "a long and secret passphrase"


def seed(site: Site) -> None:
    """An admin, and two subscribers: Nia, who has done lesson 1 of the two sent, and Tom."""
    with site.app.app_context():
        create_admin(ADMIN, PASSWORD)
        lessons = current_course().lessons
        nia = Subscriber(email="nia@example.com", name="Nia", timezone="Europe/Lisbon",
                         status=Status.ACTIVE, next_position=3, confirmed_at=utcnow(),
                         consent_at=utcnow(), consent_user_agent="Firefox")
        tom = Subscriber(email="tom@example.org", name="Tom", timezone="UTC",
                         status=Status.ACTIVE, consent_at=utcnow())
        db.session.add_all([nia, tom])
        db.session.flush()
        db.session.add_all([
            Delivery(subscriber_id=nia.id, lesson_slug=lesson.slug, position=lesson.position,
                     status=DeliveryStatus.SENT, sent_at=utcnow(),
                     completed_at=utcnow() if lesson.position == 1 else None)
            for lesson in lessons[:2]
        ])
        db.session.commit()


def test_admin_signs_in_finds_a_subscriber_and_sees_their_progress(site: Site) -> None:
    seed(site)
    page = site.page()
    page.goto("/admin/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    site.check(page, "20-admin-login")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")
    page.get_by_role("link", name="Subscribers", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Subscribers")

    page.get_by_label("Email or name contains").fill("nia@")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("p.summary")).to_have_text("1 subscriber match.")
    row = page.locator("tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("td.done")).to_have_text("1")
    expect(row.locator("td.sent")).to_have_text("2")
    site.check(page, "21-admin-subscribers")

    row.get_by_role("link", name="nia@example.com").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("nia@example.com")
    first, second, third = (page.locator(f"#lesson-{n}") for n in (1, 2, 3))
    expect(first.locator("td.done")).to_have_text(re.compile(r"UTC$"))
    expect(second.locator("td.sent")).to_have_text(re.compile(r"UTC$"))
    expect(second.locator("td.done")).to_have_text("")
    expect(third.locator("td.sent")).to_have_text("")
    site.check(page, "22-admin-subscriber")

    page.get_by_role("button", name="Pause lessons").click()
    expect(page.get_by_text("Paused: no more lessons until you resume.")).to_be_visible()
    expect(page.locator("span.status")).to_have_text("paused")
    expect(page.get_by_role("button", name="Resume lessons")).to_be_visible()
    with site.app.app_context():
        nia = db.session.scalar(db.select(Subscriber).where(Subscriber.email == "nia@example.com"))
        assert (nia.status, nia.next_send_at) == (Status.PAUSED, None)
    site.check(page, "23-admin-subscriber-paused")

    # The per-lesson figures: lesson 1 was done, lesson 2 only sent, lesson 3 not yet.
    page.get_by_role("link", name="Lessons", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Lessons")
    expect(page.locator("#lesson-1 td.sent")).to_have_text("1")
    expect(page.locator("#lesson-1 td.done")).to_have_text(re.compile(r"^1\b"))
    expect(page.locator("#lesson-2 td.done")).to_have_text(re.compile(r"^0\b"))
    expect(page.locator("#lesson-3 td.sent")).to_have_text("0")
    site.check(page, "24-admin-lessons")
