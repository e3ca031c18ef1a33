"""Everything works with JavaScript turned off: the buttons do what the scripts would have.

Without the script the time zone is unknown, so the course's default is used; the confirm
and "mark done" pages stay put until their button is pressed.
"""

from __future__ import annotations

import re

from playwright.sync_api import expect

from course.content import current_course
from course.models import Status

from .conftest import Site
from .test_newcomer import deliveries, subscriber

EMAIL = "no-script@example.com"


def test_signup_confirm_done_and_unsubscribe_work_by_pressing_buttons(site: Site) -> None:
    page = site.page(java_script_enabled=False, timezone_id="Asia/Tokyo")
    h1 = page.get_by_role("heading", level=1)
    with site.app.app_context():
        course_zone = current_course().default_timezone

    page.goto("/")
    expect(page.locator("input[name=timezone]")).to_have_value("")
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label(re.compile(r"^Yes, please email me")).check()
    page.get_by_role("button", name="Send me lesson 1").click()
    expect(h1).to_have_text("Check your inbox")
    site.jobs()  # the signup's job makes the subscriber and sends the confirmation
    sub = subscriber(site.app, EMAIL)
    assert (sub.status, sub.timezone) == (Status.PENDING, course_zone)

    page.goto(site.mailbox.link(site.mailbox.one_new(EMAIL), "confirm"))
    expect(h1).to_have_text("Confirm your address")
    site.check(page, "03-confirm")
    assert subscriber(site.app, EMAIL).status == Status.PENDING
    page.get_by_role("button", name="Yes, start the course").click()
    expect(h1).to_have_text(re.compile(r"^Welcome to "))
    assert subscriber(site.app, EMAIL).status == Status.ACTIVE

    site.jobs()
    lesson = site.mailbox.one_new(EMAIL)
    page.goto(site.mailbox.link(lesson, "done"))
    expect(h1).to_have_text(re.compile(r"^Lesson 1"))
    site.check(page, "06-done")
    assert deliveries(site.app, sub.id)[0].completed_at is None
    page.get_by_role("button", name="Mark lesson 1 done").click()
    expect(h1).to_have_text(re.compile(r"^Lesson 1 done"))
    assert deliveries(site.app, sub.id)[0].completed_at is not None

    page.goto(site.mailbox.link(lesson, "u"))
    expect(h1).to_have_text("Unsubscribe?")
    site.check(page, "08-unsubscribe")
    assert subscriber(site.app, EMAIL).status == Status.ACTIVE
    page.get_by_role("button", name="Unsubscribe").click()
    expect(h1).to_have_text("You’re unsubscribed")
    assert subscriber(site.app, EMAIL).status == Status.UNSUBSCRIBED
