"""The admin: sign-in security, the subscribers table, one subscriber's page, the outbox."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import EMAIL, PASSWORD, add_admin, csrf_from, post_login  # noqa: F401
from flask import Flask
from flask.testing import FlaskClient

from course.admin.auth import safe_next
from course.content import current_course
from course.extensions import db
from course.mail import Recipient, Template
from course.mail.outbox import OutboxBackend
from course.models import AdminUser, Delivery, DeliveryStatus, Status, Subscriber
from course.timeutil import utcnow

ROW_LINK_RE = re.compile(r'href="/admin/subscribers/(\d+)"')


def add_subscriber(email: str, **fields: Any) -> Subscriber:
    fields.setdefault("timezone", "Europe/Berlin")
    fields.setdefault("status", Status.ACTIVE)
    sub = Subscriber(email=email, **fields)
    db.session.add(sub)
    db.session.commit()
    return sub


def listed_ids(html: str) -> list[int]:
    return [int(i) for i in ROW_LINK_RE.findall(html)]


# --- signing in -------------------------------------------------------------------------


def test_login_with_the_right_password_opens_the_admin_and_records_the_time(app):
    add_admin(app)
    client = app.test_client()
    before = utcnow()
    resp = post_login(client, "  Owner@Example.COM ", PASSWORD)
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/admin/dashboard"
    assert client.get("/admin/subscribers").status_code == 200
    with app.app_context():
        user = db.session.scalar(db.select(AdminUser))
        assert user.last_login_at is not None and user.last_login_at >= before - timedelta(1)


def test_login_session_is_permanent_with_the_configured_lifetime(make_app):
    app = make_app(PERMANENT_SESSION_LIFETIME=3600)
    add_admin(app)
    client = app.test_client()
    resp = post_login(client, EMAIL, PASSWORD)
    cookie = resp.headers["Set-Cookie"]
    assert "Expires=" in cookie and "HttpOnly" in cookie
    expires = re.search(r"Expires=([^;]+)", cookie).group(1)
    lifetime = datetime.strptime(expires, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)
    assert timedelta(minutes=55) < lifetime - utcnow() <= timedelta(hours=1)


def test_wrong_password_and_unknown_email_get_the_same_generic_message(app):
    add_admin(app)
    client = app.test_client()
    wrong = post_login(client, EMAIL, "not the password at all")
    unknown = post_login(client, "nobody@example.com", PASSWORD)
    for resp in (wrong, unknown):
        assert resp.status_code == 200
        assert "Wrong email or password." in resp.get_data(as_text=True)
    strip = re.compile(r'value="[^"]*"')
    assert strip.sub("", wrong.get_data(as_text=True)) == strip.sub(
        "", unknown.get_data(as_text=True)
    )
    assert client.get("/admin/subscribers").status_code == 302


def test_deactivated_admin_cannot_sign_in(app):
    add_admin(app)
    with app.app_context():
        db.session.scalar(db.select(AdminUser)).active = False
        db.session.commit()
    resp = post_login(app.test_client(), EMAIL, PASSWORD)
    assert "Wrong email or password." in resp.get_data(as_text=True)


def test_login_without_a_csrf_token_is_refused(app):
    add_admin(app)
    client = app.test_client()
    resp = client.post("/admin/login", data={"email": EMAIL, "password": PASSWORD})
    assert resp.status_code == 400
    assert "expired" in resp.get_data(as_text=True)
    assert client.get("/admin/subscribers").status_code == 302


def test_login_posts_are_rate_limited(make_app):
    # Counted in memory, not Redis: other test runs sharing the Redis test db flush it.
    app = make_app(RATELIMIT_ENABLED=True, LOGIN_RATE_LIMIT="3 per minute",
                   RATELIMIT_STORAGE_URI="memory://")
    add_admin(app)
    client = app.test_client()
    for _ in range(3):
        assert post_login(client, EMAIL, "wrong password!!").status_code == 200
    resp = post_login(client, EMAIL, PASSWORD)
    assert resp.status_code == 429
    assert "Too many attempts" in resp.get_data(as_text=True)
    assert client.get("/admin/login").status_code == 200  # GETs are not counted
    assert client.get("/admin/subscribers").status_code == 302


@pytest.mark.parametrize("path", [
    "/admin/", "/admin/subscribers", "/admin/subscribers/1", "/admin/lessons", "/admin/outbox",
    "/admin/outbox/" + "a" * 32 + ".eml", "/admin/outbox/" + "a" * 32 + ".eml/html",
])
def test_admin_pages_require_login(client, path):
    resp = client.get(path)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/admin/login?next=")


def test_login_returns_to_the_page_asked_for(app):
    add_admin(app)
    client = app.test_client()
    login_url = client.get("/admin/subscribers?status=active").headers["Location"]
    token = csrf_from(client.get(login_url).get_data(as_text=True))
    resp = client.post(login_url, data={"email": EMAIL, "password": PASSWORD,
                                        "csrf_token": token})
    assert resp.headers["Location"] == "/admin/subscribers?status=active"


@pytest.mark.parametrize("target", [
    "//evil.com", "https://evil.com", "/\\evil.com", "\\\\evil.com", "/admin\\..\\x",
    "http://localhost/admin/", "/\t/evil.com", "/admin/../evil", "/public", "javascript:x",
    "/administrator",
])
def test_login_never_redirects_outside_the_admin(app, target):
    add_admin(app)
    resp = post_login(app.test_client(), EMAIL, PASSWORD, next_url=target)
    assert resp.headers["Location"] == "/admin/dashboard"


@pytest.mark.parametrize("target, expected", [
    ("/admin/subscribers/3", "/admin/subscribers/3"),
    ("/admin/?q=a%40b", "/admin/?q=a%40b"),
    ("/admin", "/admin"),
    ("//evil.com/admin", None),
    ("/admin/%0d%0aSet-Cookie:x", "/admin/%0d%0aSet-Cookie:x"),
    ("/admin/\r\nx", None),
    ("/admin/%2e%2e/evil", None),
    ("/admin/%2E./evil", None),
    ("", None),
])
def test_safe_next_keeps_only_paths_inside_the_admin(target, expected):
    assert safe_next(target) == expected


def test_logout_is_a_post_and_ends_the_session(admin):
    assert admin.get("/admin/logout").status_code == 405
    assert admin.get("/admin/subscribers").status_code == 200
    token = csrf_from(admin.get("/admin/subscribers").get_data(as_text=True))
    resp = admin.post("/admin/logout", data={"csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/login"
    assert admin.get("/admin/subscribers").status_code == 302


def test_logout_without_csrf_token_does_nothing(admin):
    assert admin.post("/admin/logout").status_code == 400
    assert admin.get("/admin/subscribers").status_code == 200


def test_every_admin_response_says_no_store(app, admin):
    for path, status in [("/admin/login", 302), ("/admin/subscribers", 200),
                         ("/admin/subscribers/999999", 404), ("/admin/outbox", 200)]:
        resp = admin.get(path)
        assert resp.status_code == status
        assert resp.headers["Cache-Control"] == "no-store"
    assert app.test_client().get("/admin/login").headers["Cache-Control"] == "no-store"


# --- subscribers ------------------------------------------------------------------------


def test_subscribers_can_be_searched_by_part_of_the_email_in_any_case(app, admin):
    with app.app_context():
        ann = add_subscriber("ann.smith@example.com").id
        bob = add_subscriber("bob@SMITHS.example.org".lower()).id
        add_subscriber("carol@example.com")
        add_subscriber("100%_real@example.com")
    html = admin.get("/admin/subscribers?q=SMITH").get_data(as_text=True)
    assert sorted(listed_ids(html)) == sorted([ann, bob])
    # % and _ are literal characters, not wildcards.
    assert listed_ids(admin.get("/admin/subscribers?q=0%25_").get_data(as_text=True)) != []
    assert listed_ids(admin.get("/admin/subscribers?q=a%25b").get_data(as_text=True)) == []


def test_subscribers_can_be_filtered_by_status(app, admin):
    with app.app_context():
        active = add_subscriber("a@example.com").id
        pending = add_subscriber("p@example.com", status=Status.PENDING).id
        add_subscriber("u@example.com", status=Status.UNSUBSCRIBED)
    def listed(query: str) -> list[int]:
        return listed_ids(admin.get(f"/admin/subscribers?{query}").get_data(as_text=True))

    assert listed("status=pending") == [pending]
    assert listed("status=active") == [active]
    # An unknown status is ignored rather than an error.
    assert len(listed("status=nonsense")) == 3
    html = admin.get("/admin/subscribers").get_data(as_text=True)
    for status in Status.ALL:
        assert f'<option value="{status}"' in html


def test_subscribers_are_paginated_newest_first_keeping_the_filters(make_app):
    app = make_app(ADMIN_PAGE_SIZE=25)
    add_admin(app)
    client = app.test_client()
    post_login(client, EMAIL, PASSWORD)
    start = utcnow() - timedelta(days=1)
    with app.app_context():
        subs = [Subscriber(email=f"user{i:02d}@example.com", timezone="UTC", status=Status.ACTIVE,
                           created_at=start + timedelta(minutes=i)) for i in range(60)]
        db.session.add_all(subs)
        db.session.commit()
        ids = [s.id for s in reversed(subs)]  # newest first
    # "Next" continues from the last row shown, keeping the search and filters.
    pages, url = [], "/admin/subscribers?q=user&status=active"
    while url:
        html = client.get(url).get_data(as_text=True)
        pages.append(listed_ids(html))
        found = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else ""
        if len(pages) == 2:
            assert "Page 2 of 3" in html
            assert f'href="/admin/subscribers?q=user&amp;status=active&amp;after={ids[49]}' \
                   '&amp;page=3"' in html
    assert [len(p) for p in pages] == [25, 25, 10]
    assert pages[0] + pages[1] + pages[2] == ids
    # A typed-in page number works too; past the end is an empty page with a way back.
    assert listed_ids(client.get("/admin/subscribers?page=2").get_data(as_text=True)) \
        == ids[25:50]
    html = client.get("/admin/subscribers?page=99").get_data(as_text=True)
    assert listed_ids(html) == [] and "Back to the first page" in html
    assert client.get("/admin/subscribers?page=-4").status_code == 200


def test_subscriber_counts_come_from_their_deliveries(app, admin):
    now = utcnow()
    with app.app_context():
        course = current_course()
        busy = add_subscriber("busy@example.com")
        idle = add_subscriber("idle@example.com")
        other = add_subscriber("other@example.com")
        plan = [  # (sent, opened, done) per lesson for "busy"
            (True, True, True), (True, True, False), (True, False, False), (False, False, False),
        ]
        for lesson, (sent, opened, done) in zip(course.lessons, plan, strict=False):
            db.session.add(Delivery(
                subscriber_id=busy.id, lesson_slug=lesson.slug, position=lesson.position,
                status=DeliveryStatus.SENT if sent else DeliveryStatus.QUEUED,
                sent_at=now if sent else None, opened_at=now if opened else None,
                human_opened_at=now if opened else None, completed_at=now if done else None,
            ))
        lesson = course.lessons[0]
        db.session.add(Delivery(subscriber_id=other.id, lesson_slug=lesson.slug, position=1,
                                status=DeliveryStatus.SENT, sent_at=now, opened_at=now,
                                completed_at=now))
        db.session.commit()
        ids = {"busy": busy.id, "idle": idle.id, "other": other.id}
        length = course.length
    html = admin.get("/admin/subscribers").get_data(as_text=True)

    def row(sid: int) -> str:
        start = html.index(f'href="/admin/subscribers/{sid}"')
        return html[start : html.index("</tr>", start)]

    def counts(sid: int) -> tuple[str, ...]:
        return tuple(re.search(rf'class="num {k}">(\d+)<', row(sid)).group(1)
                     for k in ("sent", "opened", "done"))

    assert counts(ids["busy"]) == ("3", "2", "1")
    assert counts(ids["idle"]) == ("0", "0", "0")
    assert counts(ids["other"]) == ("1", "1", "1")
    assert f'<progress value="1" max="{length}"' in row(ids["busy"])
    assert 'style=' not in html  # the CSP forbids inline styles


def test_subscriber_counts_take_one_query_whatever_the_page_size(app, admin):
    """The per-subscriber counts are one aggregate query, not one query per row."""
    from sqlalchemy import event

    with app.app_context():
        for i in range(3):
            add_subscriber(f"few{i}@example.com")

    def count_queries(path: str) -> int:
        seen: list[str] = []
        with app.app_context():
            engine = db.engine

            def record(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
                seen.append(statement)

            event.listen(engine, "before_cursor_execute", record)
            try:
                assert admin.get(path).status_code == 200
            finally:
                event.remove(engine, "before_cursor_execute", record)
        return len(seen)

    few = count_queries("/admin/subscribers")
    with app.app_context():
        for i in range(20):
            add_subscriber(f"many{i}@example.com")
    assert count_queries("/admin/subscribers") == few


def test_totals_show_status_counts_failed_deliveries_and_stuck_sends(app, admin):
    now = utcnow()
    with app.app_context():
        lessons = current_course().lessons
        a = add_subscriber("a@example.com")
        b = add_subscriber("b@example.com", status=Status.PENDING)
        add_subscriber("c@example.com", status=Status.PENDING)
        db.session.add_all([
            Delivery(subscriber_id=a.id, lesson_slug=lessons[0].slug, position=1,
                     status=DeliveryStatus.FAILED, error="550 mailbox unavailable"),
            Delivery(subscriber_id=a.id, lesson_slug=lessons[1].slug, position=2,
                     status=DeliveryStatus.SENDING, claimed_at=now - timedelta(minutes=20)),
            Delivery(subscriber_id=b.id, lesson_slug=lessons[0].slug, position=1,
                     status=DeliveryStatus.SENDING, claimed_at=now - timedelta(minutes=2)),
        ])
        db.session.commit()
    html = admin.get("/admin/subscribers").get_data(as_text=True)

    def stat(label: str) -> str:
        return re.search(rf"{label}</(?:a></)?dt><dd>(\d+)</dd>", html).group(1)

    assert stat("pending") == "2" and stat("active") == "1" and stat("bounced") == "0"
    assert stat("failed deliveries") == "1"
    assert "1 delivery is stuck in “sending”" in html
    assert "lesson 2" in html


def test_no_stuck_warning_when_nothing_is_stuck(admin):
    assert "stuck" not in admin.get("/admin/subscribers").get_data(as_text=True)


def test_subscriber_page_shows_consent_and_each_lessons_times(app, admin):
    sent = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)
    with app.app_context():
        lessons = current_course().lessons
        sub = add_subscriber(
            "jo@example.com", name="Jo", timezone="America/New_York",
            consent_at=datetime(2025, 3, 1, 12, 30, tzinfo=UTC), consent_ip="203.0.113.9",
            consent_user_agent="Firefox/123", consent_version="signup-v1",
            confirmed_at=datetime(2025, 3, 1, 12, 45, tzinfo=UTC), next_position=3,
            next_send_at=datetime(2025, 3, 10, 13, 0, tzinfo=UTC),
        )
        db.session.add_all([
            Delivery(subscriber_id=sub.id, lesson_slug=lessons[0].slug, position=1,
                     status=DeliveryStatus.SENT, sent_at=sent,
                     opened_at=sent + timedelta(hours=1), clicked_at=sent + timedelta(hours=2),
                     human_opened_at=sent + timedelta(hours=1),
                     completed_at=sent + timedelta(hours=3)),
            Delivery(subscriber_id=sub.id, lesson_slug=lessons[1].slug, position=2,
                     status=DeliveryStatus.SENT, sent_at=sent + timedelta(days=2)),
        ])
        db.session.commit()
        sid, titles = sub.id, [lesson.title for lesson in lessons]
    resp = admin.get(f"/admin/subscribers/{sid}")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    for text in ("jo@example.com", "America/New_York", "2025-03-01 12:30 UTC", "203.0.113.9",
                 "Firefox/123", "signup-v1", "2025-03-01 12:45 UTC", f"3. {titles[2]}",
                 "2025-03-10 13:00 UTC", "Mon 2025-03-10 09:00 EDT"):
        assert text in html, text
    rows = re.findall(r'<tr id="lesson-(\d+)">(.*?)</tr>', html, re.S)
    assert len(rows) == len(titles)

    def cells(row: str) -> dict[str, str]:
        return {k: v.strip() for k, v in re.findall(r'class="(sent|opened|clicked|done)">([^<]*)<',
                                                    row)}

    assert cells(rows[0][1]) == {"sent": "2025-03-03 08:00 UTC", "opened": "2025-03-03 09:00 UTC",
                                 "clicked": "2025-03-03 10:00 UTC", "done": "2025-03-03 11:00 UTC"}
    assert cells(rows[1][1]) == {"sent": "2025-03-05 08:00 UTC", "opened": "", "clicked": "",
                                 "done": ""}
    assert cells(rows[2][1]) == {"sent": "", "opened": "", "clicked": "", "done": ""}


def test_missing_subscriber_is_a_404_page(admin):
    resp = admin.get("/admin/subscribers/424242")
    assert resp.status_code == 404
    assert "There is nothing here" in resp.get_data(as_text=True)


def test_subscriber_data_is_escaped_in_admin_pages(app, admin):
    evil = '<script>alert(1)</script>'
    with app.app_context():
        sid = add_subscriber('"><img src=x onerror=alert(1)>@example.com', name=evil,
                             consent_user_agent=f"Mozilla {evil}").id
    for path in ("/admin/subscribers", f"/admin/subscribers/{sid}",
                 "/admin/subscribers?q=%3Cscript%3Ealert(1)%3C/script%3E"):
        html = admin.get(path).get_data(as_text=True)
        assert "<script>" not in html and "<img src=x" not in html
    html = admin.get(f"/admin/subscribers/{sid}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;@example.com" in html


# --- the outbox -------------------------------------------------------------------------


def write_outbox_message(app: Flask, subject: str = "Lesson one", name: str = "Ann") -> str:
    template = Template(
        subject=subject,
        html='<p class="x">Hello <b>%%name%%</b></p><script>alert(1)</script>'
             '<img src="http://localhost/o/tok.gif" width="1" height="1" alt="">',
        text="Hello %%name%%, plain text here.",
        from_email="course@example.com", from_name="The Course",
    )
    recipient = Recipient(email="ann@example.com", name=name, substitutions={"%%name%%": name},
                          headers={"List-Unsubscribe": "<http://localhost/u/x>"})
    result = OutboxBackend(app.config["OUTBOX_DIR"]).send_batch(template, [recipient])[0]
    return f"{result.message_id}.eml"


@pytest.fixture
def outbox_app(make_app) -> Flask:
    return make_app(MAIL_BACKEND="outbox")


@pytest.fixture
def outbox_admin(outbox_app: Flask) -> FlaskClient:
    add_admin(outbox_app)
    client = outbox_app.test_client()
    post_login(client, EMAIL, PASSWORD)
    return client


def test_outbox_lists_messages_newest_first(outbox_app, outbox_admin):
    import os
    import time

    older = write_outbox_message(outbox_app, subject="Older one")
    newer = write_outbox_message(outbox_app, subject="Newer one")
    past = time.time() - 3600
    os.utime(Path(outbox_app.config["OUTBOX_DIR"]) / older, (past, past))
    (Path(outbox_app.config["OUTBOX_DIR"]) / "notes.txt").write_text("not mail")
    html = outbox_admin.get("/admin/outbox").get_data(as_text=True)
    assert html.index(newer) < html.index(older)
    assert "Newer one" in html and "ann@example.com" in html and "notes.txt" not in html
    assert 'href="/admin/outbox"' in html  # the nav offers it


def test_outbox_message_shows_headers_text_and_a_sandboxed_html_frame(outbox_app, outbox_admin):
    name = write_outbox_message(outbox_app, name="<b>Ann</b>")
    resp = outbox_admin.get(f"/admin/outbox/{name}")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "List-Unsubscribe" in html and "Lesson one" in html
    assert "Hello &lt;b&gt;Ann&lt;/b&gt;, plain text here." in html
    assert f'<iframe class="mail-html" sandbox src="/admin/outbox/{name}/html"' in html
    assert "frame-src 'self'" in resp.headers["Content-Security-Policy"]

    frame = outbox_admin.get(f"/admin/outbox/{name}/html")
    assert frame.status_code == 200
    assert frame.mimetype == "text/html"
    csp = frame.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox; default-src 'none'; img-src * data:; style-src 'unsafe-inline'")
    assert "frame-ancestors 'self'" in csp
    assert frame.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert frame.headers["Cache-Control"] == "no-store"
    body = frame.get_data(as_text=True)
    assert "Hello <b>" in body
    assert "/o/tok.gif" not in body  # viewing here must not record an open


@pytest.mark.parametrize("name", [
    "..%2F..%2Fetc%2Fpasswd", "../secret_key", "%2E%2E%2Fsecret_key", "ABCDEF" * 5 + "00.eml",
    "a" * 32 + ".eml.bak", "a" * 31 + ".eml", "a" * 32 + ".txt", "notes.txt",
])
def test_outbox_refuses_names_that_are_not_outbox_files(outbox_app, outbox_admin, name):
    (Path(outbox_app.config["OUTBOX_DIR"]).parent / "secret_key").write_text("s3cret")
    write_outbox_message(outbox_app)
    for suffix in ("", "/html"):
        resp = outbox_admin.get(f"/admin/outbox/{name}{suffix}")
        assert resp.status_code == 404
        assert "s3cret" not in resp.get_data(as_text=True)


def test_outbox_missing_file_is_404(outbox_admin):
    assert outbox_admin.get("/admin/outbox/" + "0" * 32 + ".eml").status_code == 404


def test_outbox_page_says_when_mail_is_not_going_to_the_outbox(app, admin):
    write_outbox_message(app)  # a file left over from before: not shown
    html = admin.get("/admin/outbox").get_data(as_text=True)
    assert "no\n  outbox to show" in html or "no outbox to show" in html.replace("\n  ", " ")
    assert "MAIL_BACKEND=outbox" in html
    assert 'href="/admin/outbox"' not in admin.get("/admin/subscribers").get_data(as_text=True)
