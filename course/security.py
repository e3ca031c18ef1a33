"""Security headers on every response, a request class that survives hand-made bodies, and
in production a front door that trusts no Host but ``BASE_URL``'s.

The policy allows nothing inline and nothing from another host: pages load their CSS and
JS from ``static/``, and no page may be framed (clickjacking). The referrer policy keeps
tokenised URLs (``/u/…``, ``/c/…``) from leaking to the sites a lesson links to; it is not
``no-referrer`` because over HTTPS Flask-WTF's CSRF check wants a same-site Referer. HSTS
is sent when the site is served over HTTPS; the session cookie's flags are in ``config``.

Every response Flask makes says ``Cache-Control: no-store`` unless the view chose its own
(static files do): confirm, unsubscribe, web-view and done pages are driven by tokens and
show personal data, and a shared or back-button cache must keep none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import IO, Any, cast
from urllib.parse import urlsplit

from flask import Flask, Response, request
from flask import Request as FlaskRequest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.utils import host_is_trusted
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_input_stream

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
HSTS = "max-age=31536000; includeSubDomains"

log = logging.getLogger(__name__)


class MaxLengthStream(LimitedStream):
    """A body without ``Content-Length`` (chunked), read to at most ``limit`` bytes, and a
    413 if the client sends more.

    Werkzeug's own maximum-length stream stops quietly at the limit when read whole, so a
    chunked body past ``MAX_CONTENT_LENGTH`` was cut short: a form lost its CSRF token (400)
    and the SendGrid webhook saw broken JSON (400). Reading one byte more tells "exactly
    the limit" from "past it".
    """

    def __init__(self, stream: IO[bytes], limit: int):
        super().__init__(stream, limit, is_max=True)

    def on_exhausted(self) -> None:
        if self._stream.read(1):
            raise RequestEntityTooLarge()

    def readall(self) -> bytes:
        data = super().readall()
        if self.is_exhausted:
            self.on_exhausted()
        return data


class Request(FlaskRequest):
    """Drops form parts that have no name, which only a hand-made multipart body has, and
    answers 413 to a chunked body over the size limit (see :class:`MaxLengthStream`).

    Werkzeug files a nameless part under the key ``None``, and Flask-WTF's CSRF check then
    fails with an ``AttributeError``: a 500 for anyone, on every form. Found by fuzzing
    (tests/test_fuzz.py).
    """

    @cached_property
    def stream(self) -> IO[bytes]:  # type: ignore[override]
        if self.shallow:
            raise RuntimeError("This request was created with 'shallow=True'.")
        limit = self.max_content_length
        # The WSGI server (gunicorn, werkzeug's) de-chunks and marks the stream as ending.
        if (limit is not None and self.content_length is None
                and "wsgi.input_terminated" in self.environ):
            return cast(IO[bytes], MaxLengthStream(self.environ["wsgi.input"], limit))
        return get_input_stream(self.environ, max_content_length=limit)

    def _load_form_data(self) -> None:
        super()._load_form_data()
        for name in ("form", "files"):
            data = self.__dict__.get(name)
            if data is not None and None in data:
                self.__dict__[name] = self.parameter_storage_class(
                    [(key, value) for key, value in data.items(multi=True) if key is not None]
                )


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class BaseUrlOnly:
    """WSGI middleware for production: a request for any host but ``BASE_URL``'s gets 400,
    and every request takes ``BASE_URL``'s scheme and host (spelled as there: case, port).

    Werkzeug builds the absolute URLs of its own redirects (``/admin`` to ``/admin/``) from
    the request's Host and scheme, so ``Host: evil.example`` used to come back in a
    ``Location``, and behind an HTTPS proxy the scheme came back as ``http``. It sits inside
    ``ProxyFix`` (when ``PROXY_COUNT`` is set), so it judges the host the proxy reports.
    ``/healthz`` answers any host: load balancers probe it by address, and it builds no URL.
    """

    EXEMPT = frozenset({"/healthz"})

    def __init__(self, wsgi_app: WSGIApp, base_url: str):
        parts = urlsplit(base_url)
        self.wsgi_app = wsgi_app
        self.scheme = parts.scheme
        self.hostname = parts.hostname or ""
        self.netloc = parts.netloc
        self.warned = False

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        host = str(environ.get("HTTP_HOST") or "").lower()  # host names ignore case
        if environ.get("PATH_INFO") not in self.EXEMPT and \
                not host_is_trusted(host, [self.hostname]):
            # Once per process at WARNING (a proxy that drops the Host header refuses every
            # request, and the owner must learn why); after that quietly, against floods.
            log.log(logging.DEBUG if self.warned else logging.WARNING,
                    "refused a request for host %r: only %s is served (BASE_URL); a proxy "
                    "must pass the Host header, or X-Forwarded-Host with PROXY_COUNT set",
                    host[:100], self.hostname)
            self.warned = True
            body = b"Bad Request: this site answers only for its own address (BASE_URL).\n"
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8"),
                                               ("Content-Length", str(len(body))),
                                               ("Cache-Control", "no-store")])
            return [body]
        environ["wsgi.url_scheme"] = self.scheme
        environ["HTTP_HOST"] = self.netloc
        return self.wsgi_app(environ, start_response)


def init_app(app: Flask) -> None:
    app.request_class = Request
    app.config["PREFERRED_URL_SCHEME"] = urlsplit(app.config["BASE_URL"]).scheme or "http"

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cache-Control", "no-store")
        if request.is_secure or app.config["BASE_URL"].startswith("https://"):
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        return response
