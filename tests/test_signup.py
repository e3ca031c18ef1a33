"""The landing page and signup: double opt-in, consent kept, nothing revealed, bad input refused."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import csrf_from, run_jobs
from flask import Flask
from flask.testing import FlaskClient

from course.extensions import db
from course.models import Event, EventKind, SignupRequest, Status, Subscriber
from course.timeutil import utcnow

UA = "Mozilla/5.0 (TestBrowser)"


def post_signup(client: FlaskClient, email: str, *, name: str = "", timezone: str | None = None,
                consent: bool = True, handle: bool = True, **extra: Any) -> Any:
    """Fill in the form like a browser: load the page for its CSRF token, then post.

    The web request only records the signup; unless ``handle`` is False, the queued jobs
    then run (as a worker would at once), which handles it and sends its confirmation.
    """
    token = csrf_from(client.get("/").get_data(as_text=True))
    data = {"csrf_token": token, "email": email, "name": name, **extra}
    if timezone is not None:
        data["timezone"] = timezone
    if consent:
        data["consent"] = "y"
    res = client.post("/", data=data, headers={"User-Agent": UA})
    if handle and res.status_code == 200:
        run_jobs(client.application)
    return res


def subscriber(app: Flask, email: str) -> Subscriber | None:
    with app.app_context():
        sub = db.session.scalar(db.select(Subscriber).where(Subscriber.email == email))
        if sub is not None:
            db.session.expunge(sub)
        return sub


def count(app: Flask, model: Any) -> int:
    with app.app_context():
        return int(db.session.scalar(db.select(db.func.count()).select_from(model)) or 0)


def add(app: Flask, email: str, status: str) -> None:
    with app.app_context():
        db.session.add(Subscriber(email=email, name="Old", timezone="UTC", status=status,
                                  consent_at=utcnow(), consent_version="old"))
        db.session.commit()


def confirm_links(outbox: list[Any], email: str) -> list[str]:
    links = []
    for msg in outbox:
        if msg["To"].addresses[0].addr_spec == email:
            text = msg.get_body(("plain",)).get_content()
            links += re.findall(r"http://localhost(/confirm/\S+)", text)
    return links


def without_csrf(html: str) -> str:
    return re.sub(r'name="csrf_token"[^>]*value="[^"]+"', "", html)


def test_landing_page_sells_the_course(client: FlaskClient, app: Flask) -> None:
    res = client.get("/")
    html = res.get_data(as_text=True)
    assert res.status_code == 200
    with app.app_context():
        from course.content import current_course

        course = current_course()
    assert f"<h1>{course.title}</h1>" in html
    assert "Ten short daily lessons" in html  # tagline
    assert "<p>Changing careers is hard enough" in html  # description rendered from Markdown
    assert "Reach new people in your target field" in html  # outcomes
    for lesson in course.lessons:
        assert lesson.title.replace("'", "&#39;") in html
    assert "One lesson a day" in html
    assert '<label for="email">Email address</label>' in html
    assert '<label for="name">First name (optional)</label>' in html
    assert '<label for="consent">' in html and "unsubscribe at any time" in html
    assert re.search(r'<input[^>]*name="timezone"[^>]*type="hidden"', html)
    assert 'src="/static/timezone.js"' in html
    assert csrf_from(html)
    assert " style=" not in html and "<style" not in html and "<script>" not in html


def test_timezone_script_fills_the_hidden_field(client: FlaskClient) -> None:
    js = client.get("/static/timezone.js")
    assert js.status_code == 200
    body = js.get_data(as_text=True)
    assert "Intl.DateTimeFormat().resolvedOptions().timeZone" in body
    assert "data-browser-timezone" in body


def test_new_signup_is_pending_records_consent_and_sends_a_confirmation(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    res = post_signup(client, "  Ann@Example.COM ", name="Ann", timezone="Europe/Paris")
    assert res.status_code == 200
    assert "Check your inbox" in res.get_data(as_text=True)
    sub = subscriber(app, "ann@example.com")
    assert sub is not None
    assert (sub.status, sub.name, sub.timezone) == (Status.PENDING, "Ann", "Europe/Paris")
    assert sub.consent_at is not None and abs((utcnow() - sub.consent_at).total_seconds()) < 60
    assert sub.consent_ip == "127.0.0.1"
    assert sub.consent_user_agent == UA
    assert sub.consent_version == "signup-v2"
    assert sub.next_send_at is None
    run_jobs(app)
    assert len(confirm_links(outbox, "ann@example.com")) == 1


def test_every_signup_answers_the_same_page_whatever_the_address(
    app: Flask, client: FlaskClient
) -> None:
    post_signup(client, "pending@example.com")
    add(app, "active@example.com", Status.ACTIVE)
    add(app, "gone@example.com", Status.UNSUBSCRIBED)
    answers = [
        post_signup(client, email)
        for email in ("new@example.com", "pending@example.com", "active@example.com",
                      "gone@example.com")
    ]
    assert {res.status_code for res in answers} == {200}
    emails = ("new@example.com", "pending@example.com", "active@example.com",
              "gone@example.com")
    # Each page repeats the address it was given, and differs in nothing else.
    bodies = {without_csrf(res.get_data(as_text=True)).replace(email, "ADDRESS")
              for res, email in zip(answers, emails, strict=True)}
    assert len(bodies) == 1


def test_pending_address_gets_a_fresh_confirmation(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    post_signup(client, "ann@example.com", name="Ann")
    run_jobs(app)
    post_signup(client, "ann@example.com", name="Ann again")
    run_jobs(app)
    assert len(confirm_links(outbox, "ann@example.com")) == 2
    # Nothing changes until a link is confirmed: each link confirms its own signup.
    assert subscriber(app, "ann@example.com").name == "Ann"  # type: ignore[union-attr]
    assert count(app, Subscriber) == 1


def test_active_address_is_left_alone_and_gets_no_mail(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    add(app, "ann@example.com", Status.ACTIVE)
    post_signup(client, "ann@example.com", name="Someone else")
    run_jobs(app)
    sub = subscriber(app, "ann@example.com")
    assert sub is not None and (sub.status, sub.name, sub.consent_version) == (
        Status.ACTIVE, "Old", "old")
    assert outbox == []


def test_unsubscribed_address_can_join_again_through_confirmation(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    add(app, "ann@example.com", Status.UNSUBSCRIBED)
    post_signup(client, "ann@example.com", name="Ann")
    sub = subscriber(app, "ann@example.com")
    # Pending again; the consent on record stays the old one until the new one is confirmed.
    assert sub is not None and sub.status == Status.PENDING and sub.consent_version == "old"
    run_jobs(app)
    [link] = confirm_links(outbox, "ann@example.com")
    page = client.get(link)
    client.post(link, data={"csrf_token": csrf_from(page.get_data(as_text=True))})
    sub = subscriber(app, "ann@example.com")
    assert sub is not None and (sub.status, sub.name, sub.consent_version) == (
        Status.ACTIVE, "Ann", "signup-v2")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"email": "not-an-email"}, "Please enter a valid email address"),
        ({"email": "ann@localhost"}, "Please enter a valid email address"),
        ({"email": "ann@example.com\r\nBcc: x@example.com"}, "Please enter a valid email address"),
        ({"email": ""}, "Please enter your email address."),
        ({"email": "ann@example.com", "consent": False}, "Please tick the box"),
        ({"email": "ann@example.com", "name": "A" * 51}, "50 characters or fewer"),
        ({"email": "ann@example.com", "name": "Update your card at https://pay.example"},
         "without web or email addresses"),
        ({"email": "ann@example.com", "name": "pay-here.com"}, "without web or email"),
        ({"email": "ann@example.com", "name": "Ann www.x"}, "without web or email"),
        ({"email": "ann@example.com", "name": "ann@evil"}, "without web or email"),
        ({"email": "é@例え.jp"}, "plain letters (a to z)"),
        ({"email": "zoë@example.com"}, "plain letters (a to z)"),
        ({"email": "ann@x.invalid"}, "Please enter a valid email address"),
    ],
    ids=["bad-email", "no-domain-dot", "header-injection", "empty-email", "no-consent",
         "long-name", "url-in-name", "host-in-name", "www-in-name", "address-in-name",
         "unicode-local-part", "accented-local-part", "invalid-tld"],
)
def test_invalid_signup_shows_the_form_with_errors_and_writes_nothing(
    app: Flask, client: FlaskClient, outbox: list[Any], fields: dict[str, Any], message: str
) -> None:
    res = post_signup(client, **fields)
    html = res.get_data(as_text=True)
    assert res.status_code == 400
    assert message in html
    assert 'role="alert"' in html and 'aria-invalid="true"' in html
    assert '<form method="post" action="/"' in html  # the form again, ready to fix
    assert count(app, Subscriber) == 0 and count(app, Event) == 0
    run_jobs(app)
    assert outbox == []


def test_form_keeps_what_was_typed_after_an_error(client: FlaskClient) -> None:
    html = post_signup(client, "ann@example.com", name="Ann", consent=False).get_data(
        as_text=True)
    assert 'value="ann@example.com"' in html and 'value="Ann"' in html


@pytest.mark.parametrize("name", ["B" * 50, "J.R. Smith", "Anne-Marie", "St. John", "Zoë",
                                  "O'Neil"])
def test_ordinary_names_are_accepted(app: Flask, client: FlaskClient, name: str) -> None:
    assert post_signup(client, "ann@example.com", name=name).status_code == 200
    assert subscriber(app, "ann@example.com").name == name  # type: ignore[union-attr]


def test_control_characters_are_stripped_from_the_name(app: Flask, client: FlaskClient) -> None:
    res = post_signup(client, "ann@example.com", name="  Ann\r\nBcc: evil\x00\u202e  ")
    assert res.status_code == 200
    name = subscriber(app, "ann@example.com").name  # type: ignore[union-attr]
    assert name == "Ann Bcc: evil"


@pytest.mark.parametrize(
    ("sent", "stored"),
    [("America/New_York", "America/New_York"), ("Mars/Olympus_Mons", "UTC"),
     ("", "UTC"), (None, "UTC"), ("../../etc/passwd", "UTC")],
    ids=["real-zone", "unknown-zone", "empty", "no-js", "path"],
)
def test_time_zone_comes_from_the_browser_or_falls_back_to_the_course_default(
    app: Flask, client: FlaskClient, sent: str | None, stored: str
) -> None:
    assert post_signup(client, "ann@example.com", timezone=sent).status_code == 200
    assert subscriber(app, "ann@example.com").timezone == stored  # type: ignore[union-attr]


def test_signup_without_csrf_token_is_refused(app: Flask, client: FlaskClient) -> None:
    res = client.post("/", data={"email": "ann@example.com", "consent": "y"})
    assert res.status_code == 400
    assert "This form has expired" in res.get_data(as_text=True)
    assert count(app, Subscriber) == 0


def test_signups_are_rate_limited_with_a_friendly_page(make_app: Any) -> None:
    app = make_app(RATELIMIT_ENABLED=True, SIGNUP_RATE_LIMIT="2 per minute")
    client = app.test_client()
    assert post_signup(client, "a@example.com").status_code == 200
    assert post_signup(client, "b@example.com").status_code == 200
    res = post_signup(client, "c@example.com")
    assert res.status_code == 429
    assert 0 < int(res.headers["Retry-After"]) <= 60
    assert "Slow down a little" in res.get_data(as_text=True)
    assert subscriber(app, "c@example.com") is None
    assert client.get("/").status_code == 200  # reading the page is never limited


def test_signup_when_the_queue_is_down_is_saved_and_answered_as_usual(
    make_app: Any, outbox: list[Any]
) -> None:
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    res = post_signup(app.test_client(), "ann@example.com", handle=False)
    assert res.status_code == 200 and "Check your inbox" in res.get_data(as_text=True)
    with app.app_context():
        req = db.session.scalar(db.select(SignupRequest))
        assert req is not None
        assert (req.email, req.state, req.queued_at, req.sent_at) == (
            "ann@example.com", "new", None, None)
    # Deeper, with a real web process and Redis coming back: test_signup_outage.py.


@pytest.mark.parametrize(
    ("method", "path", "code", "text"),
    [("get", "/no-such-page", 404, "Page not found"),
     ("put", "/", 405, "can&#39;t be used that way"),
     ("get", "/u/not-a-token", 400, "This link is not valid")],
)
def test_errors_are_friendly_pages(client: FlaskClient, method: str, path: str, code: int,
                                   text: str) -> None:
    res = getattr(client, method)(path)
    assert res.status_code == code
    assert res.mimetype == "text/html"
    html = res.get_data(as_text=True)
    assert text in html and '<link rel="stylesheet" href="/static/site.css">' in html
    if code == 405:
        assert "GET" in res.headers["Allow"]


def test_too_large_a_request_is_a_413_page(make_app: Any) -> None:
    app = make_app(MAX_CONTENT_LENGTH=1024)
    res = app.test_client().post("/", data={"email": "a" * 5000})
    assert res.status_code == 413
    assert "larger than this site accepts" in res.get_data(as_text=True)


def test_signup_event_is_recorded_once(app: Flask, client: FlaskClient) -> None:
    post_signup(client, "ann@example.com")
    with app.app_context():
        kinds = db.session.scalars(db.select(Event.kind)).all()
    assert kinds == [EventKind.SIGNUP]
