"""A lesson email and a confirmation as a reader's mail app shows them, at desktop and
phone width: the same page checks as the site (contrast, no sideways scrolling, nothing
fetched from another host), with the author's photo loaded from our server, and
screenshots for people to look at."""

from __future__ import annotations

from course import confirmations, pipeline
from course.models import Status
from tests.helpers import add_signup_request, add_subscriber

from .conftest import PHONE, Site


def show(site: Site, html: str, name: str) -> None:
    page = site.page()
    page.set_content(html, wait_until="load")
    photo = page.locator("img[alt^='Photo of']")
    assert photo.evaluate("img => img.complete && img.naturalWidth") > 0, "photo not loaded"
    site.check(page, name)
    # On a phone the card fills the screen: the wrapper is fluid, not 600 px wide.
    page.set_viewport_size(PHONE)
    card = page.locator("h1").evaluate("h => h.closest('table').getBoundingClientRect().width")
    assert card <= PHONE["width"]
    page.close()


def test_lesson_and_confirmation_emails_read_well_at_both_widths(site: Site) -> None:
    with site.app.app_context():
        add_subscriber("reader@example.com", name="Ada")
        pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
        pending = add_subscriber("new@example.com", status=Status.PENDING)
        assert confirmations.send(add_signup_request(pending, sent=False).id)
    messages = {m["To"].addresses[0].addr_spec: m for m in site.mailbox.new()}
    lesson = messages["reader@example.com"]
    confirmation = messages["new@example.com"]
    show(site, lesson.get_body(("html",)).get_content(), "30-lesson-email")
    show(site, confirmation.get_body(("html",)).get_content(), "31-confirmation-email")


def test_the_landing_pages_author_and_privacy_page_pass_the_page_checks(site: Site) -> None:
    page = site.page()
    page.goto("/")
    photo = page.get_by_role("img", name="Photo of Robin Ellis")
    assert photo.evaluate("img => img.complete && img.naturalWidth") > 0
    page.get_by_role("link", name="Privacy").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Privacy"
    site.check(page, "32-privacy")
