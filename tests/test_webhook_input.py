"""What the SendGrid event webhook accepts: a bad shape is a 400, an id that cannot be ours
is ignored, and no correctly signed post can make it answer 500 (or a 503 SendGrid would
retry for a day). Every post here is signed, so the refusals are about the body alone.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from test_webhook_sendgrid import URL, event, events_of, lesson_delivery, public_b64, sign

from course import sendgrid_events as sg
from course.extensions import db
from course.ids import DB_ID_MAX
from course.models import Event, EventKind, Status, Subscriber
from course.webhooks_in import MAX_DEPTH, read_events


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def signed_app(make_app: Any, key: ec.EllipticCurvePrivateKey) -> Flask:
    # Exceptions become responses, as in production, so a 500 shows as a 500.
    return make_app(SENDGRID_WEBHOOK_PUBLIC_KEY=public_b64(key), PROPAGATE_EXCEPTIONS=False)


def post_raw(app: Flask, key: ec.EllipticCurvePrivateKey, body: bytes) -> Any:
    return app.test_client().post(URL, data=body, headers=sign(key, body),
                                  content_type="application/json")


def nested(depth: int) -> Any:
    """A value ``depth`` levels deep (a list holding a list ...)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("bad_id", [
    2**63, 2**63 - 1, 2**64 + 1, 10**30, DB_ID_MAX + 1, 2**40, -1, 0,
    "9223372036854775808", str(DB_ID_MAX + 1), "00000000000000000001", "1e3", " 7", "+7",
    1.0, True, None, [1], {"id": 1},
])
def test_an_id_that_cannot_be_ours_is_ignored_never_a_500(signed_app: Flask, key, bad_id):
    with signed_app.app_context():
        d = lesson_delivery()
        batch = [event("open", d, delivery_id=bad_id),  # engagement needs our delivery
                 event("delivered", d, delivery_id=bad_id)]  # a fact about the address
        r = post_raw(signed_app, key, json.dumps(batch).encode())
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.json == {"received": 2, "recorded": 1, "ignored": 1, "stopped": 0}
        [delivered] = events_of()
        assert delivered.kind == EventKind.DELIVERED and delivered.delivery_id is None
        assert delivered.subscriber_id == d.subscriber_id  # placed by its address


def test_the_largest_id_a_column_holds_is_still_looked_up(signed_app: Flask, key):
    with signed_app.app_context():
        d = lesson_delivery()
        batch = [event("open", d, delivery_id=str(DB_ID_MAX)), event("open", d)]
        r = post_raw(signed_app, key, json.dumps(batch).encode())
        assert r.status_code == 200 and r.json["recorded"] == 1


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # past Python's own recursion limit
    json.dumps(nested(MAX_DEPTH + 1)).encode(),
    json.dumps([{"event": "delivered", "timestamp": 1, "email": "a@example.org",
                 "pool": nested(MAX_DEPTH - 1)}]).encode(),
], ids=["100000 deep", "just too deep", "too deep inside an event"])
def test_deeply_nested_json_is_a_400(signed_app: Flask, key, body):
    r = post_raw(signed_app, key, body)
    assert r.status_code == 400
    assert "nested deeper than" in r.json["error"]


def test_nesting_up_to_the_cap_is_accepted(signed_app: Flask, key):
    with signed_app.app_context():
        d = lesson_delivery()
        deepest = event("delivered", d, pool=nested(MAX_DEPTH - 2))  # array, event, pool...
        r = post_raw(signed_app, key, json.dumps([deepest]).encode())
        assert r.status_code == 200 and r.json["recorded"] == 1


@pytest.mark.parametrize("field", ["email", "reason", "useragent", "url", "event",
                                   "sg_message_id", "delivery_id"])
@pytest.mark.parametrize("surrogate", ["x\\uDBFF", "\\ude00\\ud83d"])  # high alone; low, high
def test_a_lone_surrogate_anywhere_is_a_400(signed_app: Flask, key, field, surrogate):
    with signed_app.app_context():
        d = lesson_delivery()
        raw = event("bounce", d, type="bounce", url="https://example.org/",
                    useragent="Mozilla", reason="550 no such user")
        raw[field] = "SURROGATE"
        body = json.dumps([raw]).replace("SURROGATE", surrogate).encode()
        r = post_raw(signed_app, key, body)
        assert r.status_code == 400
        assert "lone surrogate" in r.json["error"]
        assert db.session.scalar(db.select(db.func.count()).select_from(Event)) == 0
        assert db.session.get(Subscriber, d.subscriber_id).status == Status.ACTIVE


def test_a_lone_surrogate_in_a_key_is_a_400(signed_app: Flask, key):
    body = b'[{"event": "delivered", "timestamp": 1, "email": "a@example.org", "\\ud800": 1}]'
    assert post_raw(signed_app, key, body).status_code == 400


def test_an_escaped_surrogate_pair_is_a_real_character_and_is_stored(signed_app: Flask, key):
    with signed_app.app_context():
        d = lesson_delivery()
        raw = event("bounce", d, type="bounce", reason="REASON")
        body = json.dumps([raw]).replace("REASON", "mailbox full \\ud83d\\ude00").encode()
        r = post_raw(signed_app, key, body)
        assert r.status_code == 200 and r.json["stopped"] == 1
        [bounce] = events_of(EventKind.BOUNCE)
        db.session.expire_all()
        assert db.session.get(type(d), d.id).error == "bounce: mailbox full \U0001f600"
        assert bounce.subscriber_id == d.subscriber_id


def test_nul_characters_are_dropped_from_what_is_stored(signed_app: Flask, key):
    """NUL is valid JSON and valid Unicode, so not a bad shape, but PostgreSQL's text type
    cannot hold it: the batch is kept, without the NULs."""
    with signed_app.app_context():
        d = lesson_delivery()
        raw = event("bounce", d, type="bounce", reason="550\u0000 gone", useragent="UA\u0000")
        r = post_raw(signed_app, key, json.dumps([raw]).encode())
        assert r.status_code == 200 and r.json["stopped"] == 1
        [bounce] = events_of(EventKind.BOUNCE)
        assert bounce.user_agent == "UA"
        db.session.expire_all()
        assert db.session.get(type(d), d.id).error == "bounce: 550 gone"


@pytest.mark.parametrize("body", [
    json.dumps([{"event": "delivered"}]).encode("utf-16"),
    json.dumps([{"event": "delivered"}]).encode("utf-32"),
    b"\xef\xbb\xbf[]",  # a UTF-8 byte-order mark
    b'[{"email": "\xff"}]',
    b"",
    b"null",
    b'{"event": "delivered"}',
])
def test_bodies_that_are_not_a_utf8_json_array_are_a_400(signed_app: Flask, key, body):
    assert post_raw(signed_app, key, body).status_code == 400


def test_read_events_accepts_what_sendgrid_posts():
    body = json.dumps([{"event": "open", "timestamp": 1, "email": "a@example.org",
                        "category": ["lesson", "one"], "pool": {"name": "p", "id": 7},
                        "reason": "caf\u00e9 \U0001f600"}]).encode()
    assert read_events(body)[0]["pool"] == {"name": "p", "id": 7}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text() | st.sampled_from(["\ud800", "a\udfff", "\U0001f600"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=30,
)
ANY_ID = st.one_of(st.integers(), st.text(max_size=25), st.integers().map(str), st.floats())


@settings(max_examples=300, deadline=None, database=None)
@given(body=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_body_is_read_as_a_list_of_events_or_refused_with_a_reason(body: bytes):
    try:
        events = read_events(body)
    except sg.BadPayload as exc:
        assert str(exc)
        return
    assert isinstance(events, list)
    json.dumps(events, ensure_ascii=False).encode("utf-8")  # storable: no lone surrogate
    for raw in events:
        sg.parse_event(raw)  # never raises


@settings(max_examples=300, deadline=None, database=None)
@given(delivery_id=ANY_ID, extra=st.dictionaries(st.text(max_size=12), JSON, max_size=4))
def test_every_delivery_id_an_event_yields_fits_the_column(delivery_id: Any, extra: Any):
    raw = {**extra, "event": "delivered", "timestamp": 1, "email": "a@example.org",
           "delivery_id": delivery_id}
    parsed = sg.parse_event(raw)
    assert parsed is not None
    assert parsed.delivery_id is None or 0 < parsed.delivery_id <= DB_ID_MAX
