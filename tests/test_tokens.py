"""Link tokens: signed, purpose-scoped, tamper-evident, and expiring where asked."""

from __future__ import annotations

import pytest
import time_machine

from course import tokens
from course.tokens import TokenExpired, TokenInvalid

KEY = "a-secret-key-for-token-tests-0123456789"


def test_round_trip_keeps_the_payload():
    payload = {"d": 42, "u": "https://example.org/a?b=1&c=ü"}
    assert tokens.read("click", tokens.make("click", payload, KEY), secret_key=KEY) == payload


@pytest.mark.parametrize("other", ["unsubscribe", "confirm", "click", "complete", "web"])
def test_a_token_for_one_purpose_never_passes_for_another(other):
    token = tokens.make("open", {"d": 1}, KEY)
    with pytest.raises(TokenInvalid):
        tokens.read(other, token, secret_key=KEY)


def test_another_secret_key_is_refused():
    token = tokens.make("open", {"d": 1}, KEY)
    with pytest.raises(TokenInvalid):
        tokens.read("open", token, secret_key=KEY + "x")


def tampered(token: str) -> list[str]:
    body, issued, sig = token.split(".")
    other_body = tokens._b64(b'{"d":2}')
    return [
        f"{other_body}.{issued}.{sig}",  # someone else's id
        f"{body}.{int(issued, 16) + 1:x}.{sig}",  # a newer issue time
        f"{body}.{issued}.{sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}",
        f"{body}.{issued}", body, "", "..", "a.b.c", token + ".", token * 200,
        token.replace(".", "%2E"), "é" + token,
    ]


def test_tampered_tokens_are_refused():
    token = tokens.make("open", {"d": 1}, KEY)
    for bad in tampered(token):
        with pytest.raises(TokenInvalid):
            tokens.read("open", bad, secret_key=KEY)


def test_expiry_is_enforced_only_when_asked_and_keeps_the_payload():
    with time_machine.travel("2026-01-01 00:00Z", tick=False) as clock:
        token = tokens.make("confirm", {"s": 7}, KEY)
        clock.shift(72 * 3600 - 1)
        assert tokens.read("confirm", token, max_age=72 * 3600, secret_key=KEY) == {"s": 7}
        clock.shift(2)
        with pytest.raises(TokenExpired) as info:
            tokens.read("confirm", token, max_age=72 * 3600, secret_key=KEY)
        assert info.value.payload == {"s": 7}
        # Unsubscribe links never expire.
        assert tokens.read("confirm", token, secret_key=KEY) == {"s": 7}


def test_unknown_purpose_is_a_programming_error():
    with pytest.raises(ValueError):
        tokens.make("admin", {"d": 1}, KEY)


# The batch path (``Signer.make_json`` fed by ``render.recipient_for``) writes its payloads
# by hand for speed; a token that differs by one byte from the generic one would still
# read back, so these compare the tokens themselves.

ODD_LINKS = ("https://example.org/a?b=1&c=ü", 'https://example.org/"quoted"\\path',
             "mailto:someone@example.org", "https://example.org/\u2028")


@pytest.mark.parametrize("purpose, payload", [
    ("open", {"d": 1}), ("unsubscribe", {"s": 2**31 - 1}),
    ("click", {"d": 7, "u": ODD_LINKS[0]}), ("click", {"d": 7, "k": 1, "u": ""}),
    ("click", {"d": 7, "l": "0123456789abcdef"}), ("link", {"l": "0123", "u": ODD_LINKS[1]}),
])
def test_the_batch_signer_makes_exactly_the_generic_token(purpose, payload):
    with time_machine.travel(1_800_000_000, tick=False):
        signer = tokens.Signer(KEY)
        fast = signer.make_json(purpose, tokens.payload_json(payload))
        assert fast == signer.make(purpose, payload) == tokens.make(purpose, payload, KEY)
    assert tokens.read(purpose, fast, secret_key=KEY) == payload


def test_a_lesson_recipients_links_are_the_generic_tokens():
    from course.mail import Template
    from course.render import RenderedLesson, recipient_for

    rendered = RenderedLesson(template=Template(subject="s", html="h", text="t",
                                                from_email="c@example.com"),
                              links=ODD_LINKS, content_hash="0123456789abcdef" * 4,
                              base_url="https://b", nonce="mc0123456789ab")
    with time_machine.travel(1_800_000_000, tick=False):
        signer = tokens.Signer(KEY)
        subs = recipient_for(rendered, delivery_id=31, subscriber_id=9, email="a@example.com",
                             name="Ann", signer=signer, base_url="https://b").substitutions
        m = rendered.marks
        expected = {
            m["greeting"]: "Hi Ann,", m["greeting_html"]: "Hi Ann,",
            m["open_url"]: "https://b/o/" + signer.make("open", {"d": 31}) + ".gif",
            m["done_url"]: "https://b/done/" + signer.make("complete", {"d": 31}),
            m["web_url"]: "https://b/l/" + signer.make("web", {"d": 31}),
            m["unsubscribe_url"]: "https://b/u/" + signer.make("unsubscribe", {"s": 9}),
            # One token for every click link of the lesson, bound to its version.
            m["click"]: signer.make("click", {"d": 31, "l": "0123456789abcdef"}),
        }
    assert subs == expected
