"""The security checklist, one section per promise, each run on both databases.

Where a routine test elsewhere goes deeper it is named, but every item has its own test
here, and where the app has a list of things (routes, tokenised links, forms) the test
walks the whole list, so a route added later is checked without anyone remembering to.

1. Markup in a name, an address or a user agent is escaped in admin pages and emails.
   (Admin exports do not exist yet: add them here when they do.)
2. CR/LF in any field never reaches an email header.
3. Every form refuses a missing or wrong CSRF token; only the RFC 8058 one-click
   unsubscribe and the SendGrid webhook are exempt, and each has its own guard.
4. Tampered, expired or foreign-purpose tokens are refused by every tokenised route.
5. The click tracker only redirects to URLs signed into the email.
6. Signup answers new, pending and active addresses alike.
7. Signup, confirmation resend and login are rate-limited with 429 and Retry-After.
8. Oversized bodies get 413 on every route that takes a body.
9. Forged and replayed SendGrid webhooks are refused.
10. Security headers on every response; session cookies HttpOnly, SameSite, Secure.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import time_machine
from conftest import csrf_from, run_jobs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.routing import Rule

from course import queue, tokens
from course import sendgrid_events as sg
from course.admin_accounts import create_admin
from course.content import current_course
from course.extensions import db
from course.mail import Recipient, Template, personalize
from course.mail.outbox import OutboxBackend
from course.models import Delivery, DeliveryStatus, Status, Subscriber
from course.timeutil import utcnow
from tests.helpers import copy_shipped_course

ADMIN, PASSWORD = "owner@example.com", "a long and secret passphrase"
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
# The purpose of the token each tokenised route takes. A new route with a <token> must be
# added here, or the token tests below fail for it.
PURPOSE = {
    "public.confirm_page": "confirm", "public.resend": "confirm",
    "public.unsubscribe_page": "unsubscribe", "tracking.pixel": "open",
    "tracking.click": "click", "tracking.done": "complete", "tracking.lesson": "web",
}
# Routes that take POSTs without a CSRF token, and what guards them instead.
CSRF_EXEMPT = {
    "/u/<token>": "RFC 8058 one-click: only the exact one-click body skips the check",
    "/webhooks/sendgrid": "SendGrid's signature (section 9)",
}
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
CSRF_REFUSAL = re.compile(r"form ha(s|d) expired or (was sent|came) from another site")


@dataclass
class World:
    """A pending and an active subscriber (lesson 1 sent), and an admin's signed-in client."""

    pending: int
    active: int
    delivery: int
    admin: FlaskClient

    def payload(self, purpose: str) -> dict[str, Any]:
        if purpose == "confirm":
            return {"s": self.pending}
        if purpose == "unsubscribe":
            return {"s": self.active}
        if purpose == "click":
            return {"d": self.delivery, "u": "https://example.org/guide"}
        return {"d": self.delivery}

    def path(self, rule: Rule, token: str | None = None) -> str:
        """A URL for ``rule`` with genuine arguments: a refusal is never for a bad id."""
        values: dict[str, Any] = {}
        for arg in rule.arguments:
            if arg == "token":
                purpose = PURPOSE[rule.endpoint]
                values[arg] = token or tokens.make(purpose, self.payload(purpose))
            elif arg == "delivery_id":
                values[arg] = self.delivery
            elif arg == "subscriber_id":
                values[arg] = self.active
            elif arg == "filename":
                values[arg] = "site.css"
            elif arg == "position":
                values[arg] = 1
            else:
                values[arg] = "0" * 32 + ".eml"
        return rule.build(values)[1]


def login(app: Flask) -> FlaskClient:
    with app.app_context():
        create_admin(ADMIN, PASSWORD)
    client = app.test_client()
    token = csrf_from(client.get("/admin/login").get_data(as_text=True))
    res = client.post("/admin/login", data={"email": ADMIN, "password": PASSWORD,
                                            "csrf_token": token})
    assert res.status_code == 302
    return client


def seed(app: Flask) -> World:
    with app.app_context():
        lesson = current_course().lessons[0]
        pending = Subscriber(email="pending@example.com", timezone="UTC",
                             status=Status.PENDING, consent_at=utcnow())
        active = Subscriber(email="active@example.com", timezone="UTC", status=Status.ACTIVE,
                            next_position=2, confirmed_at=utcnow(), consent_at=utcnow())
        db.session.add_all([pending, active])
        db.session.flush()
        delivery = Delivery(subscriber_id=active.id, lesson_slug=lesson.slug, position=1,
                            status=DeliveryStatus.SENT, sent_at=utcnow())
        db.session.add(delivery)
        db.session.commit()
        ids = pending.id, active.id, delivery.id
    return World(*ids, admin=login(app))


def snapshot(app: Flask) -> dict[str, Any]:
    """Every table's row count and every subscriber's and delivery's state."""
    with app.app_context():
        counts = {t.name: db.session.scalar(db.select(db.func.count()).select_from(t))
                  for t in db.metadata.sorted_tables}
        subs = db.session.execute(db.select(Subscriber.id, Subscriber.status,
                                            Subscriber.next_send_at)).all()
        deliveries = db.session.execute(db.select(Delivery.id, Delivery.status,
                                                  Delivery.completed_at)).all()
        return {"counts": counts, "subscribers": sorted(subs), "deliveries": sorted(deliveries)}


def rules(app: Flask, methods: set[str]) -> list[Rule]:
    return sorted((r for r in app.url_map.iter_rules() if r.methods and r.methods & methods),
                  key=lambda r: r.rule)


def page_token(client: FlaskClient) -> str:
    return csrf_from(client.get("/").get_data(as_text=True))


def signup(client: FlaskClient, email: str, name: str = "", **headers: str) -> Any:
    data = {"csrf_token": page_token(client), "email": email, "name": name, "consent": "y"}
    return client.post("/", data=data, headers=headers)


def press(client: FlaskClient, path: str) -> Any:
    return client.post(path, data={"csrf_token": csrf_from(client.get(path).get_data(
        as_text=True))})


# 1. Markup is escaped in admin pages and emails --------------------------------------------

EVIL_NAME = "<script>alert(1)</script><b>Nia</b>"
EVIL_UA = "Mozilla/5.0 <img src=x onerror=alert(2)>"
ODD_EMAIL = "o'neil&co@example.com"  # legal in an address, and both need escaping in HTML
EVIL_EMAIL = '"><svg onload=alert(3)>@example.com'


def confirmation_subject(app: Flask) -> str:
    with app.app_context():
        return current_course().confirmation_subject


def test_markup_in_name_address_and_user_agent_is_escaped_in_admin_pages_and_emails(
    make_app: Any,
) -> None:
    app = make_app(MAIL_BACKEND="outbox")
    client = app.test_client()
    assert signup(client, ODD_EMAIL, EVIL_NAME, **{"User-Agent": EVIL_UA}).status_code == 200
    run_jobs(app)
    outbox = Path(app.config["OUTBOX_DIR"])
    [confirmation] = outbox.glob("*.eml")
    message = BytesParser(policy=policy.default).parsebytes(confirmation.read_bytes())
    link = re.search(r"http://localhost(/confirm/\S+)",
                     message.get_body(("plain",)).get_content()).group(1)  # type: ignore
    assert press(client, link).status_code == 200
    run_jobs(app)
    messages = [BytesParser(policy=policy.default).parsebytes(p.read_bytes())
                for p in outbox.glob("*.eml")]
    assert len(messages) == 2  # the confirmation and lesson 1
    for msg in messages:
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert "<script>alert(1)" not in html and "<b>Nia" not in html
        # The confirmation carries no name at all; the lesson greets them, escaped.
        named = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;Nia&lt;/b&gt;" in html
        assert named == (msg["Subject"] != confirmation_subject(app))

    admin = login(app)
    with app.app_context():
        sub_id = db.session.scalar(db.select(Subscriber.id))
        # Signup cannot store markup in an address; an import or a bug might.
        imported = Subscriber(email=EVIL_EMAIL, timezone="UTC", status=Status.ACTIVE)
        db.session.add(imported)
        db.session.commit()
        imported_id = imported.id
    pages = ["/admin/", "/admin/subscribers", "/admin/subscribers?q=%3Cscript%3E",
             f"/admin/subscribers/{sub_id}", f"/admin/subscribers/{imported_id}",
             "/admin/lessons", "/admin/deliveries",
             "/admin/outbox", *(f"/admin/outbox/{p.name}" for p in outbox.glob("*.eml"))]
    for path in pages:
        page = admin.get(path)
        html = page.get_data(as_text=True)
        assert page.status_code == 200, path
        for raw in ("<script>alert", "<b>Nia", "<img src=x", ODD_EMAIL, "<svg onload"):
            assert raw not in html, (path, raw)
    detail = admin.get(f"/admin/subscribers/{sub_id}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;Nia&lt;/b&gt;" in detail
    assert "&lt;img src=x onerror=alert(2)&gt;" in detail
    assert "o&#39;neil&amp;co@example.com" in detail
    imported_page = admin.get(f"/admin/subscribers/{imported_id}").get_data(as_text=True)
    assert "&#34;&gt;&lt;svg onload=alert(3)&gt;@example.com" in imported_page
    # Deeper: test_admin.py::test_subscriber_data_is_escaped_in_admin_pages.


# 2. CR/LF never reaches an email header -------------------------------------------------------

def header_names(raw: bytes) -> list[str]:
    head = raw.split(b"\n\n", 1)[0].decode()
    return [line.split(":", 1)[0] for line in head.splitlines() if line[:1] not in (" ", "\t")]


def test_crlf_in_the_signup_name_adds_no_header_to_the_confirmation(
    app: Flask, outbox: list[Any]
) -> None:
    client = app.test_client()
    assert signup(client, "ann@example.com", "Ann\r\nBcc: evil\r\n\r\n<b>body</b>").status_code \
        == 200
    run_jobs(app)
    [msg] = outbox
    raw = bytes(msg)
    assert "Bcc" not in msg and not re.search(rb"(?mi)^bcc:", raw)
    assert "\n" not in str(msg["To"]) and "\r" not in str(msg["To"])
    assert msg["To"].addresses[0].addr_spec == "ann@example.com"
    assert sorted(header_names(raw)) == sorted(msg.keys())


@pytest.mark.parametrize("email", ["ann@example.com\r\nBcc: x@y", "ann@example.com\nBcc: x@y",
                                   "ann@example.com\rBcc: x@y", "ann@exa\r\nmple.com"])
def test_crlf_in_the_email_field_is_refused_and_writes_nothing(app: Flask, email: str) -> None:
    before = snapshot(app)
    assert signup(app.test_client(), email).status_code == 400
    assert snapshot(app) == before


@pytest.mark.parametrize("field", ["name", "subject", "from_name", "header", "custom_arg",
                                   "substitution"])
def test_personalised_messages_keep_every_header_on_one_line(field: str) -> None:
    """Whatever field carries CR/LF (a name stored before cleaning, a lesson subject, a
    substituted value), the message has exactly the headers we set."""
    evil = "x\r\nBcc: victim@example.net\nX-Injected: 1\r\n\r\nbody"
    template = Template(subject=evil if field == "subject" else "Lesson %%sub%%", html="<p>hi</p>",
                        text="hi", from_email="course@example.com",
                        from_name=evil if field == "from_name" else "Course")
    recipient = Recipient(
        email="ann@example.com", name=evil if field == "name" else "Ann",
        substitutions={"%%sub%%": evil if field == "substitution" else "one"},
        headers={"List-Unsubscribe": f"<https://x.example/u/{evil if field == 'header' else 't'}>"},
        custom_args={"delivery_id": evil if field == "custom_arg" else "7"},
    )
    msg = personalize(template, recipient)
    raw = bytes(msg)
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert "Bcc" not in parsed and "X-Injected" not in parsed
    assert set(header_names(raw)) == {"Subject", "From", "To", "Date", "Message-ID",
                                      "List-Unsubscribe", "X-Minicourse-Delivery-Id",
                                      "MIME-Version", "Content-Type"}


# 3. CSRF on every form -------------------------------------------------------------------------

def test_every_form_refuses_a_missing_or_wrong_csrf_token(app: Flask) -> None:
    world = seed(app)
    foreign = page_token(app.test_client())  # genuine, but another visitor's
    before = snapshot(app)
    missed = []
    posts = [r for r in rules(app, STATE_CHANGING) if r.rule not in CSRF_EXEMPT]
    assert {r.endpoint for r in posts} >= {"public.index", "public.confirm_page",
                                           "public.resend", "tracking.done", "admin.login",
                                           "admin.logout"}
    for rule in posts:
        with app.app_context():
            path = world.path(rule)
        for method in sorted(rule.methods & STATE_CHANGING):  # type: ignore[operator]
            for label, data in [("missing", {}), ("another visitor's", {"csrf_token": foreign}),
                                ("forged", {"csrf_token": "IjEi.forged.token"})]:
                res = world.admin.open(path, method=method, data=data)
                if res.status_code != 400 or not CSRF_REFUSAL.search(res.get_data(as_text=True)):
                    missed.append(f"{method} {rule.rule} with a {label} token: {res.status_code}")
    assert missed == []
    assert snapshot(app) == before
    assert world.admin.get("/admin/subscribers").status_code == 200  # the logout was refused too


def test_only_the_documented_routes_skip_csrf_and_each_has_its_own_guard(
    make_app: Any, key: ec.EllipticCurvePrivateKey
) -> None:
    app = make_app(SENDGRID_WEBHOOK_PUBLIC_KEY=public_key(key))
    world = seed(app)
    exempt = {r.rule for r in rules(app, STATE_CHANGING) if r.rule in CSRF_EXEMPT}
    assert exempt == set(CSRF_EXEMPT)
    with app.app_context():
        unsubscribe = f"/u/{tokens.make('unsubscribe', {'s': world.active})}"
    client = app.test_client()
    # The unsubscribe page's own button (any body but the one-click one) still needs a token.
    for body in ({}, {"List-Unsubscribe": "one-click"}, {"unsubscribe": "1"}):
        res = client.post(unsubscribe, data=body)
        assert res.status_code == 400 and CSRF_REFUSAL.search(res.get_data(as_text=True))
    assert client.post("/webhooks/sendgrid", data=b"[]",
                       content_type="application/json").status_code == 403
    assert snapshot(app)["subscribers"][1][1] == Status.ACTIVE
    assert client.post(unsubscribe, data=ONE_CLICK).status_code == 200
    assert snapshot(app)["subscribers"][1][1] == Status.UNSUBSCRIBED


# 4. Tokens: tampered, expired, or made for another purpose ------------------------------------

def variants(purpose: str, payload: dict[str, Any], other_id: int) -> dict[str, str]:
    genuine = tokens.make(purpose, payload)
    body, issued, signature = genuine.split(".")
    swapped = base64.urlsafe_b64encode(json.dumps(
        {k: other_id if isinstance(v, int) else v for k, v in payload.items()},
        separators=(",", ":"), sort_keys=True).encode()).decode().rstrip("=")
    flipped = signature[:-2] + ("AB" if signature[-2:] != "AB" else "CD")
    found = {
        "signature changed": f"{body}.{issued}.{flipped}",
        "payload swapped": f"{swapped}.{issued}.{signature}",
        "issue time changed": f"{body}.{int(issued, 16) + 1:x}.{signature}",
        "truncated": genuine[:-4],
        "unsigned": body,
        "another key": tokens.make(purpose, payload, secret_key="another-secret-key-" * 3),
    }
    for other in tokens.PURPOSES:
        if other != purpose:
            found[f"{other} token"] = tokens.make(other, payload)
    return found


def test_every_tokenised_route_refuses_tampered_and_foreign_tokens(app: Flask) -> None:
    world = seed(app)
    client = app.test_client()
    csrf = page_token(client)
    before = snapshot(app)
    wrong = []
    token_rules = [r for r in app.url_map.iter_rules() if "token" in r.arguments]
    assert {r.endpoint for r in token_rules} == set(PURPOSE), "add new token routes to PURPOSE"
    for rule in token_rules:
        purpose = PURPOSE[rule.endpoint]
        with app.app_context():
            cases = variants(purpose, world.payload(purpose), other_id=world.pending + 100)
        for label, token in cases.items():
            path = world.path(rule, token)
            for method in sorted(rule.methods & {"GET", "POST"}):  # type: ignore[operator]
                bodies = [{"csrf_token": csrf}] + ([ONE_CLICK] if purpose == "unsubscribe" else [])
                for body in bodies if method == "POST" else [{}]:
                    res = client.open(path, method=method, data=body)
                    if rule.endpoint == "tracking.pixel":  # always the GIF, never an error
                        ok = res.status_code == 200 and res.mimetype == "image/gif"
                    else:
                        ok = res.status_code == 400 and "Location" not in res.headers
                    if not ok:
                        wrong.append(f"{method} {rule.rule} with {label}: {res.status_code}")
    assert wrong == []
    assert snapshot(app) == before
    # Deeper: test_tokens.py, and each route's own file (test_confirm, test_tracking, ...).


def test_an_open_token_is_not_an_unsubscribe_token(app: Flask) -> None:
    world = seed(app)
    with app.app_context():
        pixel_token = tokens.make("open", {"d": world.active})  # same number, other purpose
    res = app.test_client().post(f"/u/{pixel_token}", data=ONE_CLICK)
    assert res.status_code == 400
    assert snapshot(app)["subscribers"][1][1] == Status.ACTIVE


def test_an_expired_confirmation_link_confirms_nothing(app: Flask) -> None:
    world = seed(app)
    # Signed one second longer ago than a confirmation link lives.
    with app.app_context(), time_machine.travel(
            time.time() - app.config["CONFIRM_MAX_AGE"] - 1, tick=False):
        path = f"/confirm/{tokens.Signer().make('confirm', {'s': world.pending})}"
    client = app.test_client()
    assert client.get(path).status_code == 410
    res = client.post(path, data={"csrf_token": page_token(client)})
    assert res.status_code == 410 and "This link has expired" in res.get_data(as_text=True)
    assert snapshot(app)["subscribers"][0][1] == Status.PENDING


# 5. The click tracker goes only where the email said ---------------------------------------

LINKS = ["https://example.org/guide?a=1&b=2", "https://example.net/x", "http://example.com/"]


@pytest.fixture
def linked_app(make_app: Any, tmp_path: Path) -> Flask:
    """The shipped course, with links added to lesson 1."""
    lessons = copy_shipped_course(tmp_path)
    first = sorted(lessons.glob("01-*.md"))[0]
    first.write_text(first.read_text() + f"\n\nRead [the guide]({LINKS[0]}), <{LINKS[1]}> "
                     f"and [this]({LINKS[2]}).\n")
    return make_app(LESSONS_DIR=str(lessons.parent))


def test_click_redirects_only_to_the_urls_signed_into_the_email(
    linked_app: Flask, outbox: list[Any]
) -> None:
    app = linked_app
    with app.app_context():
        db.session.add(Subscriber(email="ann@example.com", timezone="UTC", status=Status.ACTIVE,
                                  next_send_at=utcnow(), consent_at=utcnow()))
        db.session.commit()
        queue.enqueue("workers.tasks.tick", queue_name=queue.TICK_QUEUE)
    run_jobs(app)
    [msg] = outbox
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    clicks = set(re.findall(r"http://localhost(/c/[^\s\"<>)]+)", html + text))
    client = app.test_client()
    target = {path: client.get(path).headers["Location"] for path in clicks}
    # Plus the hidden canary link (machine-click detection), signed to our own web view.
    ours = {t for t in target.values() if t.startswith("/l/")}
    assert set(target.values()) - ours == set(LINKS) and len(ours) <= 1
    # Nothing in the request can steer it elsewhere.
    for path, signed_target in target.items():
        for extra in ("?u=https://evil.example/", "?next=//evil.example", "/..%2f..%2fevil"):
            res = client.get(path + extra)
            assert res.headers.get("Location") in (signed_target, None)


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "data:text/html,<script>alert(1)</script>", "//evil.example/",
    "https://", "https:///path", "/relative/path", "http://exa mple.com/",
    "https://example.org/\r\nSet-Cookie: a=b", "ftp://example.org/file", "",
])
def test_click_never_redirects_to_an_unsafe_target_even_a_signed_one(app: Flask,
                                                                      url: str) -> None:
    with app.app_context():
        path = f"/c/{tokens.make('click', {'d': 1, 'u': url})}"
    res = app.test_client().get(path)
    assert res.status_code == 400 and "Location" not in res.headers


# 6. Signup never tells who is subscribed -------------------------------------------------------

def test_signup_answers_new_pending_and_active_addresses_alike(app: Flask) -> None:
    with app.app_context():
        for status in Status.ALL:
            db.session.add(Subscriber(email=f"{status}@example.com", timezone="UTC",
                                      status=status, consent_at=utcnow()))
        db.session.commit()
    answers = {}
    for who in ["new", *Status.ALL]:
        res = signup(app.test_client(), f"{who}@example.com", "Ann")
        html = re.sub(r'name="csrf_token"[^>]*value="[^"]+"', "", res.get_data(as_text=True))
        html = html.replace(f"{who}@example.com", "ADDRESS")  # the page repeats what was typed
        answers[who] = (res.status_code,
                        tuple(sorted(k for k, _ in res.headers if k != "Set-Cookie")), html)
    assert len(set(answers.values())) == 1, "the answer differs by the address's state"
    # Deeper: test_signup.py::test_every_signup_answers_the_same_page_whatever_the_address.


# 7. Rate limits: 429 with Retry-After -----------------------------------------------------------

def limited_app(make_app: Any) -> Flask:
    # Counted in memory: other test runs sharing the Redis test database flush it.
    return make_app(RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://",
                    SIGNUP_RATE_LIMIT="2 per minute", LOGIN_RATE_LIMIT="2 per minute")


def attempt_signup(app: Flask, client: FlaskClient, n: int) -> Any:
    return signup(client, f"person{n}@example.com")


def attempt_resend(app: Flask, client: FlaskClient, n: int) -> Any:
    with app.app_context():
        sub_id = db.session.scalar(db.select(Subscriber.id).where(
            Subscriber.status == Status.PENDING))
        path = f"/confirm/{tokens.make('confirm', {'s': sub_id})}/resend"
    return client.post(path, data={"csrf_token": page_token(client)})


def attempt_login(app: Flask, client: FlaskClient, n: int) -> Any:
    token = csrf_from(client.get("/admin/login").get_data(as_text=True))
    return client.post("/admin/login", data={"email": ADMIN, "password": f"wrong {n}",
                                             "csrf_token": token})


@pytest.mark.parametrize("attempt", [attempt_signup, attempt_resend, attempt_login],
                         ids=["signup", "confirmation resend", "login"])
def test_signup_resend_and_login_are_rate_limited_with_retry_after(make_app: Any,
                                                                   attempt: Any) -> None:
    app = limited_app(make_app)
    with app.app_context():
        create_admin(ADMIN, PASSWORD)
        db.session.add(Subscriber(email="pending@example.com", timezone="UTC",
                                  status=Status.PENDING, consent_at=utcnow()))
        db.session.commit()
    client = app.test_client()
    assert [attempt(app, client, n).status_code for n in range(2)] == [200, 200]
    res = attempt(app, client, 2)
    assert res.status_code == 429
    assert 0 < int(res.headers["Retry-After"]) <= 60
    assert client.get("/").status_code == 200  # reading pages is never limited


# 8. Oversized bodies: 413 ----------------------------------------------------------------------

def test_every_route_that_takes_a_body_refuses_an_oversized_one_with_413(make_app: Any) -> None:
    app = make_app(MAX_CONTENT_LENGTH=1024, SENDGRID_WEBHOOK_MAX_BYTES=4096)
    world = seed(app)
    before = snapshot(app)
    big = {"email": "a@example.com", "name": "x" * 8192, **ONE_CLICK}
    wrong = []
    for rule in rules(app, STATE_CHANGING):
        with app.app_context():
            path = world.path(rule)
        for method in sorted(rule.methods & STATE_CHANGING):  # type: ignore[operator]
            res = world.admin.open(path, method=method, data=big)
            if res.status_code != 413:
                wrong.append(f"{method} {rule.rule}: {res.status_code}")
    assert wrong == []
    assert snapshot(app) == before


# 9. The SendGrid webhook: forged or replayed posts are refused --------------------------------

@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key(private: ec.EllipticCurvePrivateKey) -> str:
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def signed(private: ec.EllipticCurvePrivateKey, body: bytes, at: int) -> dict[str, str]:
    signature = private.sign(str(at).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {sg.SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            sg.TIMESTAMP_HEADER: str(at)}


def test_forged_stale_and_replayed_webhook_posts_change_nothing(
    make_app: Any, key: ec.EllipticCurvePrivateKey
) -> None:
    app = make_app(SENDGRID_WEBHOOK_PUBLIC_KEY=public_key(key))
    world = seed(app)
    body = json.dumps([{"event": "spamreport", "email": "active@example.com",
                        "timestamp": int(time.time()), "sg_event_id": "e1",
                        "delivery_id": str(world.delivery)}]).encode()
    now = int(time.time())
    client = app.test_client()
    before = snapshot(app)
    forger = ec.generate_private_key(ec.SECP256R1())
    refused = {
        "unsigned": {},
        "signed by another key": signed(forger, body, now),
        "signature of another body": signed(key, body + b" ", now),
        "stale (a replay of an old post)": signed(key, body, now - 3600),
        "from the future": signed(key, body, now + 3600),
    }
    for label, headers in refused.items():
        res = client.post("/webhooks/sendgrid", data=body, headers=headers,
                          content_type="application/json")
        assert res.status_code == 403, label
    assert snapshot(app) == before
    genuine = signed(key, body, now)
    assert client.post("/webhooks/sendgrid", data=body, headers=genuine,
                       content_type="application/json").status_code == 200
    after = snapshot(app)
    assert after["subscribers"][1][1] == Status.COMPLAINED
    # The same genuine post again, within its freshness window: accepted, changes nothing.
    assert client.post("/webhooks/sendgrid", data=body, headers=genuine,
                       content_type="application/json").status_code == 200
    assert snapshot(app) == after
    # Deeper: test_webhook_sendgrid.py.


# 10. Security headers and cookies ---------------------------------------------------------------

def csp(response: Any) -> dict[str, str]:
    """The policy's directives. A browser obeys the first of a repeated directive, so a
    repeat is itself a fault (it would hide what a reader thinks the policy says)."""
    policy_: dict[str, str] = {}
    for part in response.headers.get("Content-Security-Policy", "").split(";"):
        if part.strip():
            name = part.split()[0]
            policy_[name if name not in policy_ else f"repeated {name}"] = part.strip()
    return policy_


def test_every_response_sends_the_security_headers(make_app: Any) -> None:
    app = make_app(MAIL_BACKEND="outbox")
    world = seed(app)
    template = Template(subject="Hi", html="<p>hi</p>", text="hi", from_email="c@example.com")
    sent = OutboxBackend(app.config["OUTBOX_DIR"]).send_batch(
        template, [Recipient(email="ann@example.com")])[0]
    wrong = []
    for rule in rules(app, {"GET"}):
        with app.app_context():
            path = world.path(rule)
        path = path.replace("0" * 32, sent.message_id)
        res = world.admin.get(path)
        policy_ = csp(res)
        problems = []
        if res.headers.get("X-Content-Type-Options") != "nosniff":
            problems.append("no nosniff")
        if res.headers.get("Referrer-Policy") not in ("no-referrer", "same-origin"):
            problems.append("a referrer policy that could leak tokens to other sites")
        if rule.endpoint in EMAIL_HTML:
            # An email's own HTML, shown in the admin's sandboxed frame: no script may run.
            if "sandbox" not in policy_ or policy_.get("default-src") != "default-src 'none'":
                problems.append("the email HTML is not sandboxed")
        elif "unsafe-inline" in res.headers.get("Content-Security-Policy", ""):
            problems.append("inline code allowed")
        elif policy_ != EXPECTED_CSP and not (rule.endpoint in FRAMES_EMAIL and
                                              policy_ == {**EXPECTED_CSP, **FRAME_SELF}):
            problems.append(f"CSP {policy_}")
        if problems:
            wrong.append(f"GET {path} ({res.status_code}): {', '.join(problems)}")
    assert wrong == []


EXPECTED_CSP = {
    "default-src": "default-src 'self'", "img-src": "img-src 'self' data:",
    "style-src": "style-src 'self'", "script-src": "script-src 'self'",
    "form-action": "form-action 'self'", "frame-ancestors": "frame-ancestors 'none'",
    "base-uri": "base-uri 'none'", "object-src": "object-src 'none'",
}
FRAME_SELF = {"frame-src": "frame-src 'self'"}  # the outbox page frames the email's HTML
# An email's own HTML, served to be framed, and the admin pages that frame it.
EMAIL_HTML = {"admin.outbox_html", "admin.lesson_preview_html"}
FRAMES_EMAIL = {"admin.outbox_message", "admin.lesson_preview"}


def session_cookie(response: Any) -> str:
    [cookie] = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    return cookie


def sign_in(app: Flask, client: FlaskClient, base_url: str) -> Any:
    with app.app_context():
        create_admin(ADMIN, PASSWORD)
    page = client.get("/admin/login", base_url=base_url)
    # Over HTTPS, Flask-WTF also wants a same-site Referer, as a browser sends.
    return client.post("/admin/login", base_url=base_url,
                       headers={"Referer": f"{base_url}/admin/login"}, data={
        "email": ADMIN, "password": PASSWORD,
        "csrf_token": csrf_from(page.get_data(as_text=True))})


def test_over_https_hsts_is_sent_and_session_cookies_are_secure(make_app: Any) -> None:
    base = "https://course.example"
    app = make_app(BASE_URL=base, ENV={"BASE_URL": base})
    client = app.test_client()
    res = client.get("/", base_url=base)
    assert res.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    signed_in = sign_in(app, client, base)
    assert signed_in.status_code == 302
    for cookie in (session_cookie(res), session_cookie(signed_in)):
        assert all(flag in cookie for flag in ("; Secure", "; HttpOnly", "; SameSite=Lax"))


def test_over_plain_http_no_hsts_and_cookies_are_still_httponly_and_samesite(
    app: Flask,
) -> None:
    """Development on http://127.0.0.1: a Secure cookie would never come back."""
    client = app.test_client()
    res = client.get("/")
    assert "Strict-Transport-Security" not in res.headers
    signed_in = sign_in(app, client, "http://localhost")
    assert signed_in.status_code == 302
    for cookie in (session_cookie(res), session_cookie(signed_in)):
        assert "; HttpOnly" in cookie and "; SameSite=Lax" in cookie and "Secure" not in cookie
