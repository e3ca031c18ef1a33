"""Admin pages in a real browser: the dashboard's charts are drawn, legible and fit a phone."""

from __future__ import annotations

import re
from datetime import timedelta

from playwright.sync_api import Page, expect

from course import health
from course.admin_accounts import create_admin
from course.content import current_course
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Event, EventKind, Status, Subscriber
from course.timeutil import utcnow

from .conftest import DESKTOP, PHONE, Site

ADMIN = "owner@example.com"
PASSWORD = "a long and secret passphrase"


def seed(site: Site) -> None:
    """An admin; subscribers who joined over the last days; lessons 1 and 2 sent, some read
    and done; one bounce among them (over 2%, so a warning shows)."""
    now = utcnow()
    with site.app.app_context():
        create_admin(ADMIN, PASSWORD)
        lessons = current_course().lessons
        subs = [Subscriber(email=f"p{i}@example.com", timezone="UTC",
                           status=Status.BOUNCED if i == 0 else Status.ACTIVE,
                           created_at=now - timedelta(days=i % 9, hours=1))
                for i in range(24)]
        db.session.add_all(subs)
        db.session.flush()
        for i, sub in enumerate(subs):
            for lesson in lessons[: 1 + i % 2]:
                read = i % 3 != 0
                db.session.add(Delivery(
                    subscriber_id=sub.id, lesson_slug=lesson.slug, position=lesson.position,
                    status=DeliveryStatus.SENT, sent_at=now,
                    opened_at=now if read else None, human_opened_at=now if read else None,
                    clicked_at=now if read and i % 2 else None,
                    completed_at=now if read and lesson.position == 1 else None))
        db.session.add(Event(subscriber_id=subs[0].id, kind=EventKind.BOUNCE,
                             provider_event_id="sg:bounce:1"))
        db.session.commit()
        health.record_tick()


def sign_in(page: Page) -> None:
    page.goto("/admin/dashboard")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def drawn_bars(page: Page, chart: str) -> int:
    """How many bars of ``chart`` the browser laid out with a non-zero size on screen."""
    svg = page.locator(f"svg.{chart}")
    expect(svg).to_be_visible()
    box = svg.bounding_box()
    assert box and box["width"] > 0 and box["height"] > 0
    assert box["width"] <= page.viewport_size["width"]  # type: ignore[index]
    sizes = page.locator(f"svg.{chart} rect.bar").evaluate_all(
        "rects => rects.map(r => { const b = r.getBoundingClientRect(); "
        "return [b.width, b.height]; })")
    return sum(1 for width, height in sizes if width > 0 and height > 0)


def test_dashboard_draws_its_charts_at_desktop_and_phone_width(site: Site) -> None:
    seed(site)
    page = site.page()
    sign_in(page)
    expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")
    expect(page.get_by_role("link", name="Dashboard")).to_have_attribute("aria-current", "page")

    for viewport in (DESKTOP, PHONE):
        page.set_viewport_size(viewport)
        # 9 distinct signup days in the last 30; lessons 1 and 2 have every bar but lesson
        # 2's "done" (nobody marked it done).
        assert drawn_bars(page, "signups-chart") == 9
        assert drawn_bars(page, "funnel-chart") == 7
    page.set_viewport_size(DESKTOP)

    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Bounce rate")
    expect(page.locator("dd.bounce-rate")).to_have_text("2.8%")  # 1 of 36 lessons sent
    expect(page.locator("dd.tick-age")).to_have_text(re.compile(r"^\d+ s ago$"))
    # The text alternatives: the charts are named images, and the numbers are in tables.
    expect(page.get_by_role("img", name="Signups per day, last 30 days (UTC)")).to_be_visible()
    expect(page.locator("#funnel-1 td.sent")).to_have_text("24")
    page.get_by_text("Signups per day as a table").click()
    expect(page.locator("table.signups-table tbody tr")).to_have_count(30)
    site.check(page, "30-admin-dashboard")

    page.get_by_role("button", name="Refresh now").click()
    expect(page.get_by_role("status").filter(has_text="Figures refreshed.")).to_be_visible()
    expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")


def test_every_admin_page_passes_the_page_checks_at_desktop_and_phone_width(site: Site) -> None:
    """Each page the owner opens, filled with data (a long provider error included): labelled,
    legible, no outside asset, no sideways scroll on a phone; screenshots of each."""
    seed(site)
    with site.app.app_context():
        sub = db.session.scalar(db.select(Subscriber).where(Subscriber.email == "p1@example.com"))
        lesson = current_course().lessons[2]
        db.session.add(Delivery(
            subscriber_id=sub.id, lesson_slug=lesson.slug, position=lesson.position,
            status=DeliveryStatus.FAILED, attempts=1, claimed_at=utcnow(),
            error="400 from SendGrid: " + "the from address does not match a verified "
                  "Sender Identity; " * 6))
        db.session.commit()
        sub_id = sub.id
    page = site.page()
    sign_in(page)
    # An email in the outbox for the outbox pages: the lesson preview's test send.
    page.goto("/admin/lessons/1")
    page.get_by_role("button", name=re.compile("Send me a test")).click()
    expect(page.get_by_role("status")).to_contain_text(ADMIN)
    pages = {
        "40-admin-subscribers-filtered": "/admin/subscribers?status=active&sort=email",
        "41-admin-subscriber-actions": f"/admin/subscribers/{sub_id}",
        "42-admin-deliveries": "/admin/deliveries",
        "43-admin-webhooks": "/admin/webhooks",
        "44-admin-export": "/admin/export",
        "45-admin-outbox": "/admin/outbox",
        "46-admin-lessons": "/admin/lessons",
    }
    for name, path in pages.items():
        page.set_viewport_size(DESKTOP)
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        site.check(page, name)
    page.set_viewport_size(DESKTOP)
    page.goto("/admin/outbox")
    page.locator("main a[href^='/admin/outbox/']").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("[Test]")
    site.check(page, "47-admin-outbox-message")
