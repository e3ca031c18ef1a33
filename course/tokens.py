"""Signed, purpose-scoped tokens for every link in an email.

A token made for one purpose (say ``open``) never verifies for another (``unsubscribe``):
the purpose is the itsdangerous salt. No id in a URL is trusted unless it came signed.
"""

from __future__ import annotations

from typing import Any

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

PURPOSES = ("confirm", "unsubscribe", "open", "click", "complete", "web")


class TokenInvalid(Exception):
    """Tampered, malformed or made for another purpose."""


class TokenExpired(TokenInvalid):
    """Genuine but too old; ``payload`` still says whose it was."""

    def __init__(self, payload: Any):
        super().__init__("token expired")
        self.payload = payload


def _serializer(secret_key: str, purpose: str) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeTimedSerializer(secret_key, salt=f"minicourse.{purpose}")


def make(purpose: str, payload: Any, secret_key: str | None = None) -> str:
    key = secret_key or current_app.config["SECRET_KEY"]
    return str(_serializer(key, purpose).dumps(payload))


def read(purpose: str, token: str, max_age: int | None = None,
         secret_key: str | None = None) -> Any:
    key = secret_key or current_app.config["SECRET_KEY"]
    serializer = _serializer(key, purpose)
    try:
        return serializer.loads(token, max_age=max_age)
    except SignatureExpired as exc:
        payload = None
        if exc.payload is not None:
            try:
                payload = serializer.load_payload(exc.payload)
            except BadSignature:
                payload = None
        raise TokenExpired(payload) from None
    except (BadSignature, UnicodeError, ValueError, TypeError):
        raise TokenInvalid("bad token") from None
