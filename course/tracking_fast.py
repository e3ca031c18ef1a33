"""The open pixel and click redirect answered in front of Flask: the tracking hot path.

These two URLs carry most of the traffic (every proxy, scanner and reader of every
lesson), and Flask's per-request work (request context, session, the extensions' hooks)
costs more than the hit itself. :class:`FastPath` answers a valid GET with the same token
check, recording (``course.tracking_buffer``) and security headers as the views in
``course.tracking``, which answer everything else (HEAD, a bad token) as before.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from markupsafe import escape

from . import tokens, tracking_buffer
from .ids import parse_id
from .models import EventKind
from .security import CSP

log = logging.getLogger(__name__)

# A 1x1 transparent GIF89a.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
}
PIXEL_HEADERS = {**NO_CACHE, "Content-Type": "image/gif"}


def read_click(token: str, recipient: str | None,
               secret_key: str | None = None) -> tuple[int, Any, bool] | None:
    """(delivery id, signed target, canary?) of a click link, or None if it is not genuine.

    Lesson links are ``/c/<link>/<recipient>``: the target signed once per lesson version
    (purpose ``link``) and the recipient's token (``click``), both naming the same lesson
    version, so neither is trusted alone and a click is only ever credited to a delivery of
    the lesson whose link it was. ``/c/<token>`` (one ``click`` token carrying both
    delivery and target) is what emails sent before that carry, and still works.
    """
    try:
        if recipient is None:
            link = who = tokens.read("click", token, secret_key=secret_key)
        else:
            link = tokens.read("link", token, secret_key=secret_key)
            who = tokens.read("click", recipient, secret_key=secret_key)
    except tokens.TokenInvalid:
        return None
    if not isinstance(link, dict) or not isinstance(who, dict):
        return None
    delivery_id = who.get("d")
    if type(delivery_id) is not int:
        return None
    if recipient is not None and (not isinstance(link.get("l"), str)
                                  or who.get("l") != link["l"] or "u" in who):
        return None
    canary = link.get("k") == 1
    return delivery_id, None if canary else link.get("u"), canary


def safe_redirect_target(url: Any) -> bool:
    """Only absolute http(s) URLs, whatever was signed: no javascript:, data: or header tricks."""
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class FastPath:
    """WSGI middleware answering a valid GET of the pixel or a click link before Flask.

    Under gunicorn it halves the CPU a pixel costs (see ``bench/tracking.py``). Anything
    it does not handle (HEAD, a bad token, an unusual URL, an unexpected error) goes on to
    the views. ``TRACKING_FAST_PATH=0`` leaves everything to the views.
    """

    def __init__(self, wsgi_app: Any, app: Flask, prefix: str = ""):
        self.wsgi_app = wsgi_app
        self.app = app
        self.pixel_re = re.compile(re.escape(prefix) + r"/o/([^/]+)\.gif")
        self.click_re = re.compile(re.escape(prefix) + r"/c/([^/]+)(?:/([^/]+))?")
        self.secret = app.config["SECRET_KEY"]
        # What course.security adds to every Flask response (HSTS over HTTPS).
        self.secure_headers = [
            ("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"), ("X-Frame-Options", "DENY"),
        ]
        self.https_headers = [*self.secure_headers, ("Strict-Transport-Security",
                                                     "max-age=31536000; includeSubDomains")]
        if app.config["BASE_URL"].startswith("https://"):
            self.secure_headers = self.https_headers

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") == "GET":
            path = environ.get("PATH_INFO", "")
            answer = None
            try:
                if m := self.pixel_re.fullmatch(path):
                    answer = self.pixel(environ, m.group(1))
                elif m := self.click_re.fullmatch(path):
                    answer = self.click(environ, m.group(1), m.group(2))
            except Exception:  # never worse than without the fast path
                log.exception("tracking fast path failed; the view answers")
                answer = None
            if answer is not None:
                status, headers, body, confirm = answer
                https = environ.get("wsgi.url_scheme") == "https"
                start_response(status, headers + (self.https_headers if https
                                                  else self.secure_headers))
                return _Body(body, confirm)
        return self.wsgi_app(environ, start_response)

    def _read(self, purpose: str, token: str) -> dict[str, Any] | None:
        try:
            payload = tokens.read(purpose, token, secret_key=self.secret)
        except tokens.TokenInvalid:
            return None
        if not isinstance(payload, dict) or type(payload.get("d")) is not int \
                or parse_id(payload["d"]) is None:
            return None
        return payload

    def _record(self, environ: dict[str, Any], kind: str, delivery_id: int,
                url: str | None = None, canary: bool = False) -> Callable[[], None] | None:
        ua = environ.get("HTTP_USER_AGENT", "")[:512]
        return tracking_buffer.record(
            self.app, tracking_buffer.new_hit(kind, delivery_id, ua, url, canary))

    def pixel(self, environ: dict[str, Any], token: str) -> Any:
        payload = self._read("open", token)
        if payload is None:
            return None
        confirm = self._record(environ, EventKind.OPEN, payload["d"])
        headers = [*PIXEL_HEADERS.items(), ("Content-Length", str(len(PIXEL)))]
        return "200 OK", headers, PIXEL, confirm

    def click(self, environ: dict[str, Any], token: str, recipient: str | None) -> Any:
        found = read_click(token, recipient, self.secret)
        if found is None:
            return None
        delivery_id, url, canary = found
        if canary:
            web = tokens.make("web", {"d": delivery_id}, secret_key=self.secret)
            url = f"{environ.get('SCRIPT_NAME', '')}/l/{web}"
        elif not safe_redirect_target(url) or not url.isascii():
            return None  # the view answers 400, or redirects to a non-ASCII URL
        confirm = self._record(environ, EventKind.CLICK, delivery_id,
                               None if canary else url, canary)
        body = (f"<!doctype html>\n<title>Redirecting</title>\n<p>Continue to "
                f'<a href="{escape(url)}">{escape(url)}</a>.\n').encode()
        headers = [("Location", url), ("Cache-Control", "no-store"),
                   ("Content-Type", "text/html; charset=utf-8"),
                   ("Content-Length", str(len(body)))]
        return "302 FOUND", headers, body, confirm


class _Body:
    """The answer's body; the server's ``close()`` reads Redis's reply (after sending)."""

    def __init__(self, body: bytes, confirm: Callable[[], None] | None):
        self.body, self.confirm = body, confirm

    def __iter__(self) -> Any:
        yield self.body

    def close(self) -> None:
        if self.confirm is not None:
            self.confirm()


def install_fast_path(state: Any) -> None:
    """Put :class:`FastPath` in front of the app (the blueprint calls it on registration)."""
    app = state.app
    if app.config.get("TRACKING_FAST_PATH", True):
        app.wsgi_app = FastPath(app.wsgi_app, app, state.url_prefix or "")
