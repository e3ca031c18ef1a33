"""The pages people reach when something is off, and the keyboard's path through the form."""

from __future__ import annotations

import re
import time

import time_machine
from playwright.sync_api import expect

from course import tokens
from course.extensions import db
from course.models import Status, Subscriber
from course.timeutil import utcnow
from tests.helpers import add_signup_request

from .conftest import Site
from .pagecheck import FOCUS_JS


def document_error(site: Site, status: int) -> None:
    """Chromium logs any 4xx page as a failed load: expected here, and nothing else is."""
    expected = f"the server responded with a status of {status}"
    site.console_errors[:] = [e for e in site.console_errors if expected not in e]


def test_every_control_on_the_landing_page_shows_where_keyboard_focus_is(site: Site) -> None:
    page = site.page()
    page.goto("/")
    focusable = page.locator(
        "a[href]:visible, button:visible, input:not([type=hidden]):visible").count()
    seen = []
    for _ in range(focusable):
        page.keyboard.press("Tab")
        ring = page.evaluate(FOCUS_JS)
        assert ring is not None
        assert ring["outline"] or ring["shadow"], f"no visible focus on {ring['what']}"
        seen.append(ring["what"])
    assert seen[0].startswith('a "Skip to content"')
    assert any(what.startswith('button "Send me lesson 1"') for what in seen)
    site.assert_clean("focus")


def test_form_errors_are_summarised_and_tied_to_their_fields(site: Site) -> None:
    page = site.page()
    page.goto("/")
    page.get_by_label("Email address").fill("someone@nowhere")  # the browser lets it through
    page.get_by_label(re.compile(r"^Yes, please email me")).check()
    page.get_by_role("button", name="Send me lesson 1").click()
    expect(page.get_by_role("alert")).to_contain_text("Please enter a valid email address")
    email = page.get_by_label("Email address")
    expect(email).to_have_attribute("aria-invalid", "true")
    expect(email).to_have_attribute("aria-describedby", "email-error")
    document_error(site, 400)
    site.check(page, "10-signup-errors")
    with site.app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(Subscriber)) == 0


def test_an_expired_confirmation_link_offers_a_fresh_one(site: Site) -> None:
    with site.app.app_context():
        sub = Subscriber(email="late@example.com", timezone="UTC", status=Status.PENDING,
                         consent_at=utcnow())
        db.session.add(sub)
        db.session.commit()
        req = add_signup_request(sub)
        with time_machine.travel(time.time() - site.app.config["CONFIRM_MAX_AGE"] - 60,
                                 tick=False):
            old = tokens.Signer().make("confirm", {"s": sub.id, "n": req.nonce})
    page = site.page()
    page.goto(f"/confirm/{old}")
    expect(page.get_by_role("heading", level=1)).to_have_text("This link has expired")
    document_error(site, 410)
    site.check(page, "11-confirm-expired")
    page.get_by_role("button", name="Send me a new link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    site.jobs()
    assert "/confirm/" in site.mailbox.link(site.mailbox.one_new("late@example.com"), "confirm")


def test_check_inbox_repeats_the_address_and_names_the_sender(site: Site) -> None:
    """What to look for, and where: the address as we understood it (a typo shows), and
    the sender's name and address. A long address wraps at phone width."""
    address = "someone.with.a.rather.long.address+minicourse@example.com"
    page = site.page()
    page.goto("/")
    page.get_by_label("Email address").fill(f"  {address.upper()} ")
    page.get_by_label(re.compile(r"^Yes, please email me")).check()
    page.get_by_role("button", name="Send me lesson 1").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    main = page.locator("main")
    expect(main).to_contain_text(f"sending an email to {address} with a link")
    with site.app.app_context():
        from course.content import current_course

        sender = current_course().sender_name
    expect(main).to_contain_text(
        f"Look for an email from {sender} ({site.app.config['MAIL_FROM']})")
    site.check(page, "03-check-inbox-long-address")


def test_broken_links_and_missing_pages_get_friendly_pages(site: Site) -> None:
    page = site.page()
    page.goto("/u/not-a-real-token")
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Something was wrong with that request")
    expect(page.locator("main")).to_contain_text("cut short when it was copied")
    document_error(site, 400)
    site.check(page, "12-bad-link")
    page.goto("/no/such/page")
    expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
    document_error(site, 404)
    site.check(page, "13-not-found")
