"""What a lesson email carries: both parts, tracked links, one-click unsubscribe headers."""

from __future__ import annotations

import re

from course import pipeline
from course.extensions import db
from course.models import Delivery
from tests.helpers import add_subscriber, copy_shipped_course


def send_first_lesson(app, outbox, **sub_kwargs):
    with app.app_context():
        sub = add_subscriber("reader@example.com", **sub_kwargs)
        pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
        delivery = db.session.scalar(db.select(Delivery).where(Delivery.subscriber_id == sub.id))
    assert len(outbox) == 1
    return outbox[0], delivery


def parts(msg):
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    return html, text


def test_lesson_email_has_every_required_part(app, outbox):
    msg, delivery = send_first_lesson(app, outbox, name="Ada")
    assert delivery.status == "sent"
    assert msg["Subject"] == "Day 1: Why your biggest fans may hesitate"
    assert msg["To"] == "Ada <reader@example.com>"
    html, text = parts(msg)
    # Preheader, title, greeting and the lesson itself.
    assert "The people who usually back you may get nervous" in html
    assert "When your cheerleaders go quiet" in html and "Hi Ada," in html
    assert re.search(r"<h2[^>]*>Today(&rsquo;|’|')s exercise</h2>", html)
    assert "Hi Ada," in text and "TODAY'S EXERCISE" in text
    # Our CSS is inlined on the elements; the only <style> blocks left are MJML's, in the
    # head (phone media queries, Outlook fixes), where they work.
    body = html[html.index("<body"):]
    assert "<style" not in body
    assert re.search(r'<h2 style="[^"]*font-size: 19px', html)
    # Signed links: done, web view, unsubscribe, open pixel, in both parts where they belong.
    for path in ("/done/", "/l/", "/u/"):
        assert f"http://localhost{path}" in html and f"http://localhost{path}" in text
    assert re.search(r'<img[^>]+src="http://localhost/o/[^"]+\.gif"', html)
    assert "Mark this lesson done" in html and "View in browser" in html
    assert "Unsubscribe" in html
    assert "%%" not in html and "%%" not in text and "%%" not in msg["Subject"]


def test_one_click_unsubscribe_headers(app, outbox):
    msg, _ = send_first_lesson(app, outbox)
    assert re.fullmatch(r"<http://localhost/u/[^>]+>", msg["List-Unsubscribe"])
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html, _ = parts(msg)
    unsubscribe_in_body = re.search(r'href="(http://localhost/u/[^"]+)"', html).group(1)
    assert msg["List-Unsubscribe"] == f"<{unsubscribe_in_body}>"


def test_names_are_escaped_in_html_and_kept_out_of_headers(app, outbox):
    msg, _ = send_first_lesson(app, outbox, name='<script>alert(1)</script> Bob')
    html, text = parts(msg)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Bob" in html
    assert "Hi <script>alert(1)</script> Bob," in text


def test_links_in_the_lesson_are_rewritten_to_signed_click_urls(make_app, outbox, tmp_path):

    lessons = copy_shipped_course(tmp_path)
    first = next(lessons.glob("01-*.md"))
    first.write_text(first.read_text() + "\nRead [the guide](https://example.org/guide?a=1&b=2).\n")
    app = make_app(LESSONS_DIR=str(lessons.parent))
    msg, _ = send_first_lesson(app, outbox)
    html, text = parts(msg)
    assert "https://example.org/guide" not in html
    assert "https://example.org/guide" not in text
    click = re.search(r'href="(http://localhost/c/[^"]+)"', html).group(1)
    assert click in text
    from course import tokens

    link, recipient = click.removeprefix("http://localhost/c/").split("/")
    with app.app_context():
        target = tokens.read("link", link)
        who = tokens.read("click", recipient)
    # The target is signed once for the lesson; the recipient's token names the delivery.
    assert target["u"] == "https://example.org/guide?a=1&b=2"
    assert set(who) == {"d", "l"} and who["l"] == target["l"]
    answer = app.test_client().get(click.removeprefix("http://localhost"))
    assert answer.status_code == 302
    assert answer.headers["Location"] == "https://example.org/guide?a=1&b=2"


def test_each_lesson_version_is_rendered_once(app, outbox):
    from course.content import current_course
    from course.render import render_lesson

    with app.app_context():
        course = current_course()
        first = render_lesson(course, course.lesson_at(1))
        again = render_lesson(course, course.lesson_at(1))
        assert first is again
        for i in range(5):
            add_subscriber(f"r{i}@example.com")
        pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
        cache = app.extensions["minicourse_render"]
        assert len(cache) == 1
    assert len(outbox) == 5
    # Every recipient got their own links.
    unsubscribe_links = {m["List-Unsubscribe"] for m in outbox}
    assert len(unsubscribe_links) == 5


def test_confirmation_email_carries_the_confirm_link(app, outbox):
    from course import confirmations
    from course.models import Status
    from tests.helpers import add_signup_request

    with app.test_request_context():
        sub = add_subscriber("new@example.com", status=Status.PENDING, name="Zoë")
        assert confirmations.send(add_signup_request(sub, sent=False).id)
    msg = outbox[0]
    html, text = parts(msg)
    assert msg["Subject"] == "Please confirm your spot in Networking for career changers"
    link = re.search(r'href="(http://localhost/confirm/[^"]+)"', html).group(1)
    assert link in text
    assert "Zoë" not in text + html  # the name is whatever the form was given: left out
    assert "72 hours" in text
