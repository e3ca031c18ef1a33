"""The course owner previews a lesson in a real browser: the email at desktop and phone
width in sandboxed frames, its plain-text part, and a test email to themselves."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from course.admin_accounts import create_admin
from course.content import current_course
from course.extensions import db
from course.models import Delivery, Subscriber

from .conftest import DESKTOP, PHONE, Site

ADMIN = "owner@example.com"
PASSWORD = "a long and secret passphrase"


def shoot_frames(site: Site, page: Page, width: str) -> None:
    """A picture of the frames alone (at phone width, of the phone one). Chromium paints
    sandboxed frames in another process and leaves them blank in a full-page screenshot
    until they have been captured once, so this also makes ``site.check``'s show them."""
    frames = ".lesson-frames" if width == "desktop" else "iframe.lesson-frame-phone"
    page.locator(frames).screenshot(
        path=str(site.screenshots.directory / f"25-admin-lesson-preview-frames-{width}.png"))


def test_admin_previews_a_lesson_at_both_widths_and_sends_a_test(site: Site) -> None:
    with site.app.app_context():
        create_admin(ADMIN, PASSWORD)
        third = current_course().lesson_at(3)
        assert third is not None
        title, subject = third.title, third.subject
    page = site.page()
    page.goto("/admin/login")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.goto("/admin/lessons")
    page.get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(title)
    expect(page.locator("dd.subject")).to_have_text(subject)

    desktop = page.locator("iframe.lesson-frame-desktop")
    phone = page.locator("iframe.lesson-frame-phone")
    for frame in (page.frame_locator("iframe.lesson-frame-desktop"),
                  page.frame_locator("iframe.lesson-frame-phone")):
        expect(frame.locator("h1")).to_have_text(title)
        expect(frame.get_by_text("Hi Sam,")).to_be_visible()
    assert round(desktop.bounding_box()["width"]) == 640
    assert round(phone.bounding_box()["width"]) == 375
    # The email itself lays out at each width: the phone frame's page is 375 pixels wide
    # (less its border) and does not scroll sideways.
    frames = [f for f in page.frames if f.url.endswith("/admin/lessons/3/email.html")]
    widths = sorted(f.evaluate("document.documentElement.clientWidth") for f in frames)
    assert widths[0] <= 375 < widths[1] <= 640
    for f in frames:
        assert f.evaluate("document.documentElement.scrollWidth"
                          " <= document.documentElement.clientWidth")
    expect(page.locator("pre.lesson-text")).to_contain_text(f"{title}\n")

    # From a phone: the page fits (the frames shrink to the screen) and the test send works.
    page.set_viewport_size(PHONE)
    assert phone.bounding_box()["width"] <= PHONE["width"]
    page.get_by_role("button", name="Send me a test").click()
    expect(page.get_by_role("status")).to_contain_text(f"Test email sent to {ADMIN}")
    message = site.mailbox.one_new(ADMIN)
    assert message["Subject"] == f"[Test] {subject}"
    with site.app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Delivery)) == 0
        assert db.session.scalar(db.select(db.func.count()).select_from(Subscriber)) == 0

    # Pictures last: Chromium misses clicks after an element screenshot taller than the screen.
    page.set_viewport_size(DESKTOP)
    expect(page.frame_locator("iframe.lesson-frame-desktop").locator("h1")).to_have_text(title)
    shoot_frames(site, page, "desktop")
    site.check(page, "25-admin-lesson-preview")
    page.set_viewport_size(PHONE)
    shoot_frames(site, page, "phone")
