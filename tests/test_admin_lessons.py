"""A lesson's page in the admin: its email as subscribers get it, its figures, a test send.

The preview is the real renderer's output for a recipient that is nobody (delivery and
subscriber id 0), served sandboxed on its own URL; the test send goes through the mail
backend to the signed-in admin and creates no rows.
"""

from __future__ import annotations

import html as html_lib
import re
from email.message import EmailMessage
from typing import Any

import pytest
from conftest import csrf_from
from flask import Flask
from flask.testing import FlaskClient
from test_admin import EMAIL, PASSWORD, add_admin, post_login

from course import tracking_buffer
from course.content import current_course
from course.extensions import db
from course.mail import personalize
from course.models import Delivery, DeliveryStatus, Event, EventKind, Status, Subscriber
from course.render import recipient_for, render_lesson
from course.timeutil import utcnow
from tests.helpers import copy_shipped_course

OTHER = "colleague@example.com"
# A click link has two tokens: the lesson's signed target, then the recipient's.
TOKEN_URL_RE = re.compile(
    r"http://localhost/(?:o|c|done|l|u)/[A-Za-z0-9._~=-]+(?:/[A-Za-z0-9._~=-]+)?(?:\.gif)?")


def signed_in(app: Flask, email: str = EMAIL) -> FlaskClient:
    add_admin(app, email, PASSWORD)
    client = app.test_client()
    assert post_login(client, email, PASSWORD).status_code == 302
    return client


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    return signed_in(app)


def lesson(app: Flask, position: int) -> Any:
    with app.app_context():
        found = current_course().lesson_at(position)
        assert found is not None
        return found


def send_test(client: FlaskClient, position: int) -> Any:
    token = csrf_from(client.get(f"/admin/lessons/{position}").get_data(as_text=True))
    return client.post(f"/admin/lessons/{position}/test", data={"csrf_token": token})


def row_counts(app: Flask) -> tuple[int, int, int]:
    with app.app_context():
        tracking_buffer.flush()
        return tuple(db.session.scalar(db.select(db.func.count()).select_from(model))
                     for model in (Subscriber, Delivery, Event))  # type: ignore[return-value]


# --- the lessons page and the preview page ------------------------------------------------


def test_the_lessons_page_links_every_title_to_its_preview(app, admin):
    page = admin.get("/admin/lessons").get_data(as_text=True)
    with app.app_context():
        lessons = current_course().lessons
    for each in lessons:
        assert (f'<a href="/admin/lessons/{each.position}">'
                f"{html_lib.escape(each.title, quote=False)}</a>") in page.replace("&#39;", "'")


def test_preview_shows_subject_text_part_and_two_sandboxed_frames(app, admin):
    third = lesson(app, 3)
    resp = admin.get("/admin/lessons/3")
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert html_lib.escape(third.title) in page and html_lib.escape(third.subject) in page
    # The text part, rendered for the sample reader, with links that belong to no delivery.
    text = html_lib.unescape(re.search(r'<pre class="mail-text lesson-text">(.*?)</pre>',
                                       page, re.S).group(1))
    assert text.startswith(f"{current_title(app)}: lesson 3 of ")
    assert "Hi Sam," in text and "%%" not in text
    assert "Mark this lesson done: http://localhost/done/" in text
    frames = re.findall(r'<iframe class="lesson-frame lesson-frame-(\w+)" sandbox\s+'
                        r'src="/admin/lessons/3/email.html"', page)
    assert frames == ["desktop", "phone"]
    assert 'style="' not in page  # widths come from admin.css, never inline styles
    csp = resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "frame-src 'self'" in csp
    assert "'unsafe-inline'" not in csp and "sandbox" not in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"
    assert 'href="/admin/lessons/2"' in page and 'href="/admin/lessons/4"' in page


def current_title(app: Flask) -> str:
    with app.app_context():
        return current_course().title


def test_preview_email_is_what_a_subscriber_gets_minus_the_pixel(app, admin):
    """Same renderer, same layout: only the signed tokens (and the left-out pixel) differ."""
    resp = admin.get("/admin/lessons/2/email.html")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    preview = resp.get_data(as_text=True)
    with app.app_context():
        course = current_course()
        rendered = render_lesson(course, course.lesson_at(2))
        recipient = recipient_for(rendered, delivery_id=41, subscriber_id=7,
                                  email="sam@example.com", name="Sam")
        real = personalize(rendered.template, recipient).get_body(("html",)).get_content()
    assert "/o/" in real and "/o/" not in preview  # viewing the preview is no open
    real = re.sub(r'<img src="http://localhost/o/[^"]+"[^>]*>', "", real)
    assert TOKEN_URL_RE.sub("URL", preview).strip() == TOKEN_URL_RE.sub("URL", real).strip()
    assert html_lib.escape(lesson(app, 2).title) in preview and "Hi Sam," in preview


def test_preview_email_is_sandboxed_and_only_framed_by_our_own_pages(app, admin):
    resp = admin.get("/admin/lessons/1/email.html")
    csp = [part.strip() for part in resp.headers["Content-Security-Policy"].split(";")]
    assert "sandbox" in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'self'" in csp and "frame-ancestors 'none'" not in csp
    assert not any(part.startswith("script-src") for part in csp)  # default-src 'none' rules
    assert "form-action 'none'" in csp
    assert resp.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert resp.headers["Cache-Control"] == "no-store"
    # Every other admin page still refuses to be framed at all.
    for path in ("/admin/lessons", "/admin/lessons/1", "/admin/login"):
        other = admin.get(path) if path != "/admin/login" else app.test_client().get(path)
        assert "frame-ancestors 'none'" in other.headers["Content-Security-Policy"], path
        assert other.headers["X-Frame-Options"] == "DENY", path


def test_the_preview_links_are_refused_and_record_nothing(app, admin):
    """Signed for delivery and subscriber 0: every tracked link says "not valid"."""
    with app.app_context():
        sub = Subscriber(email="ann@example.com", name="Ann", timezone="UTC",
                         status=Status.ACTIVE, next_position=2, confirmed_at=utcnow())
        db.session.add(sub)
        db.session.flush()
        db.session.add(Delivery(subscriber_id=sub.id, lesson_slug=lesson(app, 1).slug,
                                position=1, status=DeliveryStatus.SENT, sent_at=utcnow()))
        db.session.commit()
    page = admin.get("/admin/lessons/1/email.html").get_data(as_text=True)
    text = html_lib.unescape(admin.get("/admin/lessons/1").get_data(as_text=True))
    links = {html_lib.unescape(u) for u in TOKEN_URL_RE.findall(page + text)}
    kinds = {re.match(r"http://localhost/(\w+)/", u).group(1) for u in links}
    assert kinds == {"c", "done", "l", "u"}  # "c": the hidden canary link
    visitor = app.test_client()
    for url in links:
        path = url.removeprefix("http://localhost")
        resp = visitor.get(path)
        if path.startswith("/c/"):  # the canary leads to the web view, which refuses it
            assert resp.status_code == 302, path
            resp = visitor.get(resp.headers["Location"])
        assert resp.status_code == 400, path
        assert "not valid" in resp.get_data(as_text=True), path
        if path.startswith("/u/"):  # a mail provider's one-click unsubscribe
            assert visitor.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 400
    assert row_counts(app) == (1, 1, 0)
    with app.app_context():
        assert db.session.scalar(db.select(Subscriber)).status == Status.ACTIVE
        d = db.session.scalar(db.select(Delivery))
        assert (d.opened_at, d.clicked_at, d.completed_at) == (None, None, None)


def test_the_lessons_own_links_go_straight_to_their_targets(make_app, tmp_path):
    lessons = copy_shipped_course(tmp_path)
    first = next(lessons.glob("01-*.md"))
    first.write_text(first.read_text()
                     + "\nRead [the guide](https://example.org/guide?a=1&b=2).\n")
    app = make_app(LESSONS_DIR=str(lessons.parent))
    client = signed_in(app)
    page = client.get("/admin/lessons/1/email.html").get_data(as_text=True)
    assert re.search(r'href="https://example.org/guide\?a=1&b=2"[^>]*>the guide</a>', page)
    assert page.count("http://localhost/c/") == 1  # only the hidden canary
    text = html_lib.unescape(client.get("/admin/lessons/1").get_data(as_text=True))
    assert "the guide (https://example.org/guide?a=1&b=2)" in text


def test_preview_figures_are_this_lessons_people_and_machines(app, admin):
    now = utcnow()
    with app.app_context():
        slug2 = current_course().lesson_at(2).slug
        subs = [Subscriber(email=f"s{i}@example.com", timezone="UTC", status=Status.ACTIVE)
                for i in range(4)]
        db.session.add_all(subs)
        db.session.flush()
        # Lesson 2: four sent; one read and clicked by a person and marked done, one opened
        # by a privacy proxy only, two untouched.
        rows = [Delivery(subscriber_id=s.id, lesson_slug=slug2, position=2,
                         status=DeliveryStatus.SENT, sent_at=now) for s in subs]
        rows[0].opened_at = rows[0].human_opened_at = rows[0].clicked_at = now
        rows[0].completed_at = now
        rows[1].opened_at = now
        db.session.add_all(rows)
        db.session.flush()
        db.session.add_all([
            Event(subscriber_id=subs[1].id, delivery_id=rows[1].id, kind=EventKind.OPEN,
                  machine=True, occurred_at=now, provider_event_id="hit:a"),
            Event(subscriber_id=subs[0].id, delivery_id=rows[0].id, kind=EventKind.CLICK,
                  machine=False, occurred_at=now, provider_event_id="hit:b"),
        ])
        db.session.commit()
    page = admin.get("/admin/lessons/2").get_data(as_text=True)

    def figure(name: str) -> str:
        return re.search(rf'<dd class="{name}">([^<]*)', page).group(1).strip()

    assert figure("sent") == "4"
    assert figure("human-opened") == "1" and "25%" in page
    assert figure("machine-only") == "1"
    assert figure("clicked") == "1" and figure("done") == "1"
    assert figure("hits-machine-opens") == "1" and figure("hits-human-clicks") == "1"
    other = admin.get("/admin/lessons/3").get_data(as_text=True)
    assert re.search(r'<dd class="sent">0</dd>', other)


@pytest.mark.parametrize("path", ["/admin/lessons/99", "/admin/lessons/0",
                                  "/admin/lessons/99/email.html"])
def test_an_unknown_lesson_is_a_404_page(admin, path):
    resp = admin.get(path)
    assert resp.status_code == 404
    assert "There is nothing here" in resp.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/admin/lessons/1", "/admin/lessons/1/email.html"])
def test_previews_need_a_signed_in_admin(client, path):
    resp = client.get(path)
    assert resp.status_code == 302 and "/admin/login" in resp.headers["Location"]


# --- send me a test -----------------------------------------------------------------------


def test_send_me_a_test_mails_the_lesson_to_the_admin_and_creates_no_rows(app, admin,
                                                                       outbox):
    second = lesson(app, 2)
    before = row_counts(app)
    resp = send_test(admin, 2)
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/lessons/2"
    assert len(outbox) == 1
    message: EmailMessage = outbox[0]
    assert message["To"].addresses[0].addr_spec == EMAIL
    assert message["Subject"] == f"[Test] {second.subject}"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Minicourse-Delivery-Id"] is None
    body = message.get_body(("html",)).get_content()
    assert html_lib.escape(second.title) in body and "Hi Sam," in body
    assert row_counts(app) == before == (0, 0, 0)
    page = admin.get(resp.headers["Location"]).get_data(as_text=True)
    assert f"Test email sent to {EMAIL} through the memory mail backend." in page


def test_send_me_a_test_goes_to_whoever_is_signed_in(app, outbox):
    colleague = signed_in(app, OTHER)
    assert send_test(colleague, 1).status_code == 302
    assert [m["To"].addresses[0].addr_spec for m in outbox] == [OTHER]


def test_send_me_a_test_needs_the_csrf_token_and_a_post(app, admin, outbox):
    assert admin.post("/admin/lessons/1/test").status_code == 400
    assert admin.get("/admin/lessons/1/test").status_code == 405
    assert outbox == []


def test_send_me_a_test_for_an_unknown_lesson_is_a_404(app, admin, outbox):
    token = csrf_from(admin.get("/admin/lessons/1").get_data(as_text=True))
    resp = admin.post("/admin/lessons/99/test", data={"csrf_token": token})
    assert resp.status_code == 404 and outbox == []


def test_a_failed_test_send_says_why_on_the_page(make_app):
    # A real SMTP backend aimed at a port nobody listens on.
    app = make_app(MAIL_BACKEND="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=9, SMTP_STARTTLS=False)
    client = signed_in(app)
    resp = send_test(client, 1)
    assert resp.status_code == 302
    page = client.get("/admin/lessons/1").get_data(as_text=True)
    assert f"The test email to {EMAIL} was not sent: cannot connect to 127.0.0.1:9" in page
    assert row_counts(app) == (0, 0, 0)


def test_send_me_a_test_is_rate_limited_per_admin(make_app, outbox):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://",
                   ADMIN_TEST_SEND_LIMIT="2 per hour")
    owner = signed_in(app)
    assert [send_test(owner, 1).status_code for _ in range(2)] == [302, 302]
    refused = send_test(owner, 1)
    assert refused.status_code == 429
    assert "Too many attempts" in refused.get_data(as_text=True)
    assert len(outbox) == 2
    # Another admin has a count of their own.
    assert send_test(signed_in(app, OTHER), 1).status_code == 302
    assert len(outbox) == 3
