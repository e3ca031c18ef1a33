"""Security headers on every response, and a request class that survives hand-made bodies.

The policy allows nothing inline and nothing from another host: pages load their CSS and
JS from ``static/``, and no page may be framed (clickjacking). The referrer policy keeps
tokenised URLs (``/u/…``, ``/c/…``) from leaking to the sites a lesson links to; it is not
``no-referrer`` because over HTTPS Flask-WTF's CSRF check wants a same-site Referer. HSTS
is sent when the site is served over HTTPS; the session cookie's flags are in ``config``.
"""

from __future__ import annotations

from flask import Flask, Response, request
from flask import Request as FlaskRequest

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
HSTS = "max-age=31536000; includeSubDomains"


class Request(FlaskRequest):
    """Drops form parts that have no name, which only a hand-made multipart body has.

    Werkzeug files such a part under the key ``None``, and Flask-WTF's CSRF check then
    fails with an ``AttributeError``: a 500 for anyone, on every form. Found by fuzzing
    (tests/test_fuzz.py).
    """

    def _load_form_data(self) -> None:
        super()._load_form_data()
        for name in ("form", "files"):
            data = self.__dict__.get(name)
            if data is not None and None in data:
                self.__dict__[name] = self.parameter_storage_class(
                    [(key, value) for key, value in data.items(multi=True) if key is not None]
                )


def init_app(app: Flask) -> None:
    app.request_class = Request

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.is_secure or app.config["BASE_URL"].startswith("https://"):
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        return response
