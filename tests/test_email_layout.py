"""The email layout and what every footer says: MJML tables Outlook keeps, the author, the
postal address, the privacy page, why the email came, and an honest unsubscribe line.
Also the public side of the same facts: the landing page, /privacy and the author photo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from course import confirmations, pipeline
from course.email_layout import plain_emphasis
from course.models import Status
from tests.helpers import SHIPPED_COURSE, add_signup_request, add_subscriber, copy_shipped_course

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = "Robin Ellis, 1 Example Street, Bristol BS1 4DJ, United Kingdom"


def send_lesson_one(app, outbox):
    with app.app_context():
        add_subscriber("reader@example.com", name="Ada")
        pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
    assert len(outbox) == 1
    return outbox[0]


def send_confirmation(app, outbox):
    with app.test_request_context():
        sub = add_subscriber("new@example.com", status=Status.PENDING)
        req = add_signup_request(sub, sent=False)
        assert confirmations.send(req.id)
    return outbox[-1]


def parts(msg):
    return msg.get_body(("html",)).get_content(), msg.get_body(("plain",)).get_content()


def footer_of(html: str) -> str:
    """The HTML after the card: everything from the footer block on."""
    return html[html.index('class="footer"'):]


def test_lesson_footer_names_author_address_privacy_and_why(app, outbox):
    html, text = parts(send_lesson_one(app, outbox))
    footer = footer_of(html)
    assert "Robin Ellis" in footer and "Career coach who changed fields twice" in footer
    assert ADDRESS in footer
    assert 'href="http://localhost/privacy"' in footer
    assert re.search(r'<img src="http://localhost/author/photo\?v=[0-9a-f]{12}"[^>]*'
                     r'alt="Photo of Robin Ellis"', footer)
    assert ("because you signed up for Networking for career changers at localhost and "
            "confirmed your address") in footer
    # What the links really do: the footer's opens a page, the mail app's is one click.
    assert "Unsubscribe opens a page with one button" in footer
    assert re.search(r'href="http://localhost/u/[^"]+"[^>]*>Unsubscribe</a>', footer)
    tail = text[text.index("\n--\n"):]
    for fact in ("Robin Ellis: Career coach", ADDRESS, "Privacy: http://localhost/privacy",
                 "because you signed up for Networking for career changers",
                 "Unsubscribe (opens a page with one button): http://localhost/u/"):
        assert fact in tail, fact


def test_confirmation_footer_names_author_address_privacy_and_why(app, outbox):
    msg = send_confirmation(app, outbox)
    html, text = parts(msg)
    footer = footer_of(html)
    assert "Robin Ellis" in footer and ADDRESS in footer
    assert 'href="http://localhost/privacy"' in footer
    assert "someone entered this address on the signup form at localhost" in footer
    assert "/u/" not in html  # nothing to unsubscribe from before confirming
    for fact in ("Robin Ellis: Career coach", ADDRESS, "Privacy: http://localhost/privacy",
                 "someone entered this address on the signup"):
        assert fact in text, fact


def test_from_name_is_the_course_not_the_tool(app, outbox):
    lesson = send_lesson_one(app, outbox)
    confirmation = send_confirmation(app, outbox)
    for msg in (lesson, confirmation):
        name = msg["From"].addresses[0].display_name
        assert name == "Networking for career changers"
        assert "minicourse" not in name.lower()


def test_layout_is_a_600px_table_wrapper_for_outlook_and_fluid_for_phones(app, outbox):
    html, _ = parts(send_lesson_one(app, outbox))
    # Outlook (Word) gets a fixed 600 px table inside MSO conditional comments ...
    assert re.search(r'<!--\[if mso \| IE\]><table[^>]*width="600"', html)
    assert "<o:OfficeDocumentSettings>" in html
    # ... everyone else a fluid block capped at 600 px, so phones get the full width.
    assert "max-width:600px" in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert 'role="presentation"' in html
    # The button is a table cell Outlook draws, not a styled link alone.
    assert re.search(r'<td[^>]*bgcolor="#0b5cad"[^>]*>\s*<a href="http://localhost/done/', html)
    # No web fonts: opening the email asks no one else for anything.
    assert "fonts.googleapis" not in html


def test_preheader_comes_first_then_the_spacer(app, outbox):
    html, _ = parts(send_lesson_one(app, outbox))
    body = html[html.index("<body"):]
    preheader = re.search(r'<div class="preheader" style="([^"]*)">(.*?)</div>', body, re.S)
    assert preheader is not None
    assert "display:none" in preheader.group(1) and "mso-hide:all" in preheader.group(1)
    text = preheader.group(2)
    assert text.startswith("The people who usually back you may get nervous")
    spacer = text[text.index("what to do.") + len("what to do."):]
    assert spacer == "\u200c&nbsp;" * 90
    # It is the first thing in the body, so it is what the inbox previews.
    assert body.index('class="preheader"') < body.index("Hi Ada,")


def test_lesson_shows_its_reading_and_exercise_time(app, outbox):
    html, text = parts(send_lesson_one(app, outbox))
    assert "About 2 minutes to read, then a 15-minute exercise." in html
    assert "About 2 minutes to read, then a 15-minute exercise." in text


@pytest.mark.parametrize(("markdown", "plain"), [
    ("Mark it **specific** or **vague**.", "Mark it *specific* or *vague*."),
    ("how *they* would feel", "how _they_ would feel"),
    ("__bold__ and _it_", "*bold* and _it_"),
    ("* a bullet\n* another *word*", "* a bullet\n* another _word_"),
    ("2 * 3 * 4 stays", "2 * 3 * 4 stays"),
    ("snake_case_name stays", "snake_case_name stays"),
])
def test_text_part_keeps_bold_as_stars_and_italics_as_underscores(markdown, plain):
    assert plain_emphasis(markdown) == plain


def test_lesson_text_part_keeps_bold_and_italics_apart(app, outbox):
    _, text = parts(send_lesson_one(app, outbox))
    assert "Mark it *specific* or *vague*." in text
    assert "how _they_ would feel" in text
    assert "**" not in text


def test_raw_html_a_lesson_leaves_unbalanced_still_renders(make_app, outbox, tmp_path):
    """MJML's parser refuses unbalanced HTML; the layout tidies a lesson's HTML first."""
    lessons = copy_shipped_course(tmp_path)
    first = next(lessons.glob("01-*.md"))
    first.write_text(first.read_text() + "\n<div><p>An unclosed thought<br>\n\n</span>Done.\n")
    app = make_app(LESSONS_DIR=str(lessons.parent))
    html, _ = parts(send_lesson_one(app, outbox))
    assert "An unclosed thought" in html and "Done." in html
    assert html.rstrip().endswith("</html>")


# The public side ---------------------------------------------------------------------------

def test_landing_page_shows_author_real_lengths_address_and_privacy(client):
    page = client.get("/").get_data(as_text=True)
    assert "Robin Ellis" in page and "Career coach who changed fields twice" in page
    assert re.search(r'<img class="author-photo" src="/author/photo\?v=[0-9a-f]{12}"', page)
    assert "About 2 min to read each" in page and "Exercises of 15–25 min" in page
    assert "takes about 2 minutes to read and ends with an exercise of 15–25 minutes" in page
    assert "five minutes" not in page and "15-minute" not in page
    assert ADDRESS in page
    assert 'href="/privacy"' in page
    assert "one-click unsubscribe link" not in page  # the footer's link opens a page


def test_author_photo_is_served_with_its_type_and_cached(client):
    response = client.get("/author/photo?v=x")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.data == (SHIPPED_COURSE / "author.png").read_bytes()
    assert "max-age=604800" in response.headers["Cache-Control"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_author_photo_route_takes_no_path_from_the_url(client):
    assert client.get("/author/photo/../course.yml").status_code == 404
    assert client.get("/author/course.yml").status_code == 404


def test_built_in_privacy_page_says_who_what_and_how_to_leave(make_app):
    app = make_app(MAIL_REPLY_TO="privacy@example.org", MAIL_BACKEND="sendgrid",
                   SENDGRID_API_KEY="SG.test")
    response = app.test_client().get("/privacy")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "<h1>Privacy</h1>" in page
    assert "Robin Ellis" in page and ADDRESS in page
    assert 'href="mailto:privacy@example.org"' in page
    assert "SendGrid" in page
    assert "opens a page with one button" in page


def test_privacy_url_in_the_course_file_replaces_the_built_in_page(make_app, outbox,
                                                                   tmp_path):
    lessons = copy_shipped_course(tmp_path)
    course_file = lessons / "course.yml"
    course_file.write_text(course_file.read_text().replace(
        "# privacy_url: https://example.com/privacy", "privacy_url: https://example.org/p"))
    app = make_app(LESSONS_DIR=str(lessons.parent))
    response = app.test_client().get("/privacy")
    assert response.status_code == 302
    assert response.headers["Location"] == "https://example.org/p"
    html, text = parts(send_lesson_one(app, outbox))
    assert 'href="https://example.org/p"' in footer_of(html)
    assert "Privacy: https://example.org/p" in text
