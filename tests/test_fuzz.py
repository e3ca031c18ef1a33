"""Property-based fuzzing: arbitrary input never yields a 500 or a partial write.

Every route of the app (public pages, tracking links, the webhook, the admin's sign-in)
gets arbitrary paths, tokens, form bodies, content types and user agents; a refusal (any
4xx) must leave every table exactly as it was. Signed tokens carrying arbitrary payloads
(only we can make those, so this is defence in depth) must not break anything either.
The lesson loader gets arbitrary front matter and bodies: it returns a course or raises
``CourseError`` whose every problem reads ``file:line: problem``.

Fast on purpose: one app per database for the whole module (Hypothesis replays examples
inside one test, so a per-test app would not isolate them anyway), a bounded number of
examples, no example database written to the work tree. ``FUZZ_EXAMPLES=500`` digs deeper.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from conftest import BACKENDS, base_config, csrf_from, wipe
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis import Redis
from werkzeug.routing.converters import NumberConverter

from course import create_app, tokens
from course.content import current_course
from course.extensions import db
from course.lessons import COURSE_FILE, LESSON_FIELDS, Course, CourseError, load_course
from course.models import Delivery, DeliveryStatus, SignupRequest, Status, Subscriber
from course.schedule import valid_timezone
from course.timeutil import utcnow
from tests.helpers import SHIPPED_COURSE

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROBLEM_RE = re.compile(r"^.+:\d+: .+")

# Things people and robots actually send, mixed with anything at all.
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300)
token_like = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"\A[A-Za-z0-9_-]{0,60}\.[0-9a-fx]{0,12}\.[A-Za-z0-9_=-]{0,40}\Z"),
    st.sampled_from(["", ".", "..", "%00", "a" * 5000, "../../etc/passwd", "<script>"]),
)
form_keys = st.one_of(st.sampled_from(["email", "name", "timezone", "consent", "csrf_token",
                                       "List-Unsubscribe", "password", "confirm", "id",
                                       "next", "scope", "q"]), st.text(max_size=12))
form_values = st.one_of(st.text(max_size=400), st.sampled_from(
    ["y", "One-Click", "ann@example.com", "Europe/Paris", "America", "\r\nBcc: x@y"]))
content_types = st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data",
                                 "application/json", "text/plain", "application/xml", ""])


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_app(request: pytest.FixtureRequest, database_urls: dict[str, str],
             redis_conn: Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app per database for the module, with a pending and an active subscriber."""
    redis_conn.flushdb()
    app = create_app(base_config(database_urls[request.param], tmp_path_factory.mktemp("fuzz")))
    wipe(app)
    with app.app_context():
        lesson = current_course().lessons[0]
        pending = Subscriber(email="pending@example.com", timezone="UTC",
                             status=Status.PENDING, consent_at=utcnow())
        active = Subscriber(email="active@example.com", timezone="UTC", status=Status.ACTIVE,
                            next_position=2, confirmed_at=utcnow(), consent_at=utcnow())
        db.session.add_all([pending, active])
        db.session.flush()
        db.session.add(Delivery(subscriber_id=active.id, lesson_slug=lesson.slug, position=1,
                                status=DeliveryStatus.SENT, sent_at=utcnow()))
        db.session.commit()
    yield app
    wipe(app)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    redis_conn.flushdb()


@pytest.fixture(scope="module")
def visitor(fuzz_app: Flask) -> tuple[FlaskClient, str]:
    """A browser that has loaded the landing page: a session and its CSRF token."""
    client = fuzz_app.test_client()
    return client, csrf_from(client.get("/").get_data(as_text=True))


def snapshot(app: Flask) -> tuple[Any, ...]:
    """Row counts of every table, and the state of every subscriber and delivery."""
    with app.app_context():
        counts = tuple(db.session.scalar(db.select(db.func.count()).select_from(t))
                       for t in db.metadata.sorted_tables)
        subs = db.session.execute(db.select(
            Subscriber.id, Subscriber.status, Subscriber.name, Subscriber.timezone,
            Subscriber.next_send_at).order_by(Subscriber.id)).all()
        deliveries = db.session.execute(db.select(
            Delivery.id, Delivery.status, Delivery.completed_at).order_by(Delivery.id)).all()
        return counts, tuple(subs), tuple(deliveries)


def check(app: Flask, before: tuple[Any, ...], response: Any, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code}"
    if response.status_code >= 400:
        assert snapshot(app) == before, f"{what}: refused with {response.status_code} but wrote"


def fill(rule: Any, token: str) -> str:
    """A URL for ``rule``: 1 for every number in it (ids, lesson positions), ``token`` for
    every string."""
    values = {}
    for arg in rule.arguments:
        numeric = isinstance(rule._converters.get(arg), NumberConverter)
        values[arg] = 1 if numeric else token
    return rule.build(values)[1]


@FUZZ
@given(data=st.data(), token=token_like, body=st.dictionaries(form_keys, form_values, max_size=6),
       with_csrf=st.booleans(), content_type=content_types, agent=header_text)
def test_any_request_to_any_route_is_answered_without_a_500_or_a_partial_write(
    fuzz_app: Flask, visitor: tuple[FlaskClient, str], data: st.DataObject, token: str,
    body: dict[str, str], with_csrf: bool, content_type: str, agent: str,
) -> None:
    client, csrf = visitor
    rule = data.draw(st.sampled_from(sorted(fuzz_app.url_map.iter_rules(), key=str)))
    method = data.draw(st.sampled_from(sorted(rule.methods - {"OPTIONS"})))
    path = fill(rule, quote(token, safe=""))
    if with_csrf:
        body = {**body, "csrf_token": csrf}
    before = snapshot(fuzz_app)
    kwargs: dict[str, Any] = {"headers": {"User-Agent": agent}}
    if method not in ("GET", "HEAD"):
        if content_type in ("application/json", "text/plain", "application/xml"):
            kwargs.update(data=repr(body).encode(), content_type=content_type)
        else:
            kwargs.update(data=body, content_type=content_type or None)
    response = client.open(path, method=method, **kwargs)
    check(fuzz_app, before, response, f"{method} {path}")


NAMELESS_PARTS = [
    b'--XX\r\nContent-Disposition: form-data\r\n\r\nhello\r\n--XX--\r\n',
    b'--XX\r\nContent-Disposition: form-data; filename="a.txt"\r\n\r\nhi\r\n--XX--\r\n',
]


@pytest.mark.parametrize("body", NAMELESS_PARTS, ids=["field", "file"])
def test_a_multipart_part_without_a_name_is_refused_not_a_500(
    fuzz_app: Flask, visitor: tuple[FlaskClient, str], body: bytes
) -> None:
    """Found by the test above: Flask-WTF's CSRF check crashed on such a part."""
    client, _ = visitor
    before = snapshot(fuzz_app)
    for rule in fuzz_app.url_map.iter_rules():
        if "POST" in (rule.methods or ()):
            response = client.post(fill(rule, "x"), data=body,
                                   content_type="multipart/form-data; boundary=XX")
            check(fuzz_app, before, response, f"POST {rule.rule}")


@FUZZ
@given(email=st.one_of(st.emails(), st.text(max_size=80), st.just("")),
       name=st.text(max_size=150), timezone=st.one_of(st.text(max_size=70), st.sampled_from(
           ["Europe/Paris", "America", "UTC", "../../etc/passwd", "x" * 300])),
       consent=st.sampled_from(["y", "", "on", "false", None]), agent=header_text)
def test_signup_with_any_fields_never_500s_and_stores_only_clean_values(
    fuzz_app: Flask, visitor: tuple[FlaskClient, str], email: str, name: str, timezone: str,
    consent: str | None, agent: str,
) -> None:
    client, csrf = visitor
    body = {"csrf_token": csrf, "email": email, "name": name, "timezone": timezone}
    if consent is not None:
        body["consent"] = consent
    before = snapshot(fuzz_app)
    response = client.post("/", data=body, headers={"User-Agent": agent})
    check(fuzz_app, before, response, f"signup {body!r}")
    with fuzz_app.app_context():
        # The web request records the signup; a job makes the subscriber from that record.
        for sub in [*db.session.scalars(db.select(Subscriber)),
                    *db.session.scalars(db.select(SignupRequest))]:
            assert valid_timezone(sub.timezone), sub.timezone
            assert not re.search(r"[\x00-\x1f\x7f]", sub.name + sub.consent_user_agent)
            assert sub.email == sub.email.strip().lower() and "\n" not in sub.email
            assert sub.email.isascii() and len(sub.name) <= 50


json_payloads = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=3), children, max_size=3)),
    max_leaves=8,
)
# A payload that is the right shape but names no row that exists (huge, negative, zero).
unknown_ids = st.one_of(st.integers(max_value=0), st.integers(min_value=10**6),
                        st.integers(min_value=2**31), st.integers(min_value=2**63))


@FUZZ
@given(data=st.data(), payload=st.one_of(json_payloads, st.fixed_dictionaries(
    {"s": unknown_ids, "d": unknown_ids, "u": st.text(max_size=40)})), one_click=st.booleans())
def test_signed_tokens_with_any_payload_never_500_and_write_nothing(
    fuzz_app: Flask, visitor: tuple[FlaskClient, str], data: st.DataObject, payload: Any,
    one_click: bool,
) -> None:
    client, csrf = visitor
    rules = [r for r in fuzz_app.url_map.iter_rules() if "token" in r.arguments]
    rule = data.draw(st.sampled_from(sorted(rules, key=str)))
    purpose = data.draw(st.sampled_from(tokens.PURPOSES))
    method = data.draw(st.sampled_from(sorted(rule.methods & {"GET", "POST"})))
    with fuzz_app.app_context():
        path = fill(rule, tokens.make(purpose, payload))
    body = {"List-Unsubscribe": "One-Click"} if one_click else {"csrf_token": csrf}
    before = snapshot(fuzz_app)
    response = client.open(path, method=method, data=body if method == "POST" else None)
    check(fuzz_app, before, response, f"{method} {rule.rule} {purpose} {payload!r}")
    if response.status_code < 400:
        assert snapshot(fuzz_app) == before, f"{rule.rule} {payload!r} wrote for no one"


# The lesson loader ------------------------------------------------------------------------

yaml_values = st.one_of(
    st.text(max_size=30), st.integers(-3, 400), st.booleans(), st.none(),
    st.lists(st.text(max_size=8), max_size=3), st.dates(),
    st.sampled_from(["a-slug", "Europe/Paris", "America", "x" * 300, "line\nbreak",
                     "[link](relative/path)", "<https://example.org>", "{", "- x", ": y"]),
)
COURSE_BASE = yaml.safe_load((SHIPPED_COURSE / COURSE_FILE).read_text(encoding="utf-8"))
LESSON_BASE = {"slug": "one", "position": 1, "title": "One", "subject": "One",
               "preheader": "First"}


def dump(data: dict[str, Any], flow: bool) -> str:
    return yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True, sort_keys=False)


@st.composite
def course_files(draw: st.DrawFn) -> dict[str, bytes]:
    """A course folder: the course file and a few lessons, each a little or very broken."""
    course = {k: v for k, v in COURSE_BASE.items()
              if not draw(st.booleans()) or k not in draw(st.sets(st.sampled_from(
                  list(COURSE_BASE)), max_size=2))}
    course.update(draw(st.dictionaries(st.sampled_from([*COURSE_BASE, "default_timezone",
                                                        "progress_gated", "max_wait_days"]),
                                       yaml_values, max_size=2)))
    files = {COURSE_FILE: draw(st.one_of(
        st.just(dump(course, False)), st.just(dump(course, True)), st.text(max_size=200),
    )).encode("utf-8")}
    if draw(st.integers(0, 20)) == 0:
        files[COURSE_FILE] = b"\xff" + files[COURSE_FILE]  # not UTF-8
    for n in range(draw(st.integers(0, 3))):
        front = dict(LESSON_BASE, slug=f"lesson-{n}", position=n + 1)
        for key in draw(st.sets(st.sampled_from(LESSON_FIELDS), max_size=2)):
            front.pop(key)
        front.update(draw(st.dictionaries(st.sampled_from([*LESSON_FIELDS, "extra"]),
                                          yaml_values, max_size=2)))
        head = draw(st.one_of(st.just(dump(front, False)), st.just(dump(front, True)),
                              st.text(max_size=120)))
        body = draw(st.one_of(st.text(max_size=200), st.just("Read [this](https://x.org)."),
                              st.just("[ref]: relative\n"), st.just("")))
        text = draw(st.sampled_from([f"---\n{head}---\n{body}", f"---\n{head}\n{body}",
                                     f"{head}\n---\n{body}", body]))
        raw = text.encode("utf-8")
        if draw(st.integers(0, 20)) == 0:
            raw = b"---\n\xff\xfe" + raw  # not UTF-8
        files[f"{n:02d}-{draw(st.from_regex(r'[a-z]{1,6}', fullmatch=True))}.md"] = raw
    return files


def shipped_with(**course: Any) -> dict[str, bytes]:
    """The shipped course's file with some settings changed, and one good lesson."""
    lesson = f"---\n{dump(LESSON_BASE, False)}---\nHello.\n".encode()
    return {COURSE_FILE: dump({**COURSE_BASE, **course}, False).encode(), "01-one.md": lesson}


# Faults found by this test once, kept as fixed examples so they stay fixed.
KNOWN = [
    shipped_with(default_timezone="America"),  # a folder of zones, not a zone
    shipped_with(default_timezone="x" * 300),  # a name too long for the file system
    {**shipped_with(), COURSE_FILE: dump(COURSE_BASE, True).encode()},  # flow style
    {**shipped_with(), COURSE_FILE: b"\xfftitle: x\n"},  # not UTF-8
    {**shipped_with(), "01-one.md": f"---\n{dump(LESSON_BASE, True)}---\nHi\n".encode()},
    {**shipped_with(), "01-one.md": b'---\n"slug": one\nposition: 0\n---\nHi\n'},
]


@settings(max_examples=EXAMPLES * 3 // 2, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=course_files())
@example(files=KNOWN[0])
@example(files=KNOWN[1])
@example(files=KNOWN[2])
@example(files=KNOWN[3])
@example(files=KNOWN[4])
@example(files=KNOWN[5])
def test_the_lesson_loader_returns_a_course_or_file_and_line_problems(
    files: dict[str, bytes],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, content in files.items():
            (folder / name).write_bytes(content)
        try:
            course = load_course(folder)
        except CourseError as exc:
            assert exc.problems
            for problem in exc.problems:
                assert PROBLEM_RE.fullmatch(problem), problem
        else:
            assert isinstance(course, Course) and course.lessons
