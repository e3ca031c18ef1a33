"""Hardening found by probing as an attacker would (issue 11): huge ids, the Host header,
caching of token pages, and chunked bodies past the size limit.

1. No id from outside (URL, form, token, webhook) larger than a column holds reaches the
   database as a bound parameter; the request is a 4xx or harmless, never a 500.
2. In production the app answers only for BASE_URL's host, and its redirects carry
   BASE_URL's scheme and host whatever the request said.
3. Every page Flask makes says ``Cache-Control: no-store``; static files do not.
4. A chunked body past the limit is a 413 (it used to be cut short, then a 400), over a
   real socket through a real WSGI server that de-chunks.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import csrf_from
from flask import Flask
from sqlalchemy import event
from test_security import rules, seed
from test_webhook_sendgrid import lesson_delivery, public_b64, sign
from werkzeug.serving import BaseWSGIServer, make_server

from course import tokens
from course.extensions import db
from course.ids import DB_ID_MAX, parse_id, parse_ids

HUGE = [DB_ID_MAX + 1, 2**63, 2**64 + 1, 10**30]
PUBLIC = "https://course.example.com"


# 1. Ids ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (1, 1), ("1", 1), (DB_ID_MAX, DB_ID_MAX), (str(DB_ID_MAX), DB_ID_MAX),
    (DB_ID_MAX + 1, None), (str(DB_ID_MAX + 1), None), (2**63, None), ("9" * 30, None),
    (0, None), ("0", None), (-5, None), ("-5", None), ("+5", None), (" 5", None),
    ("5 ", None), ("٣", None), ("0x10", None), ("", None), (True, None), (5.0, None),
    (None, None), ([5], None),
])
def test_parse_id_takes_only_what_an_id_column_holds(value, expected):
    assert parse_id(value) == expected


def test_parse_ids_keeps_the_good_ones_in_order():
    assert parse_ids(["3", "x", str(2**63), 1, "2"]) == [3, 1, 2]


@contextmanager
def bound_integers(app: Flask) -> Iterator[list[int]]:
    """Every integer bound as a parameter to a statement while the block runs."""
    seen: list[int] = []

    def flatten(value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            seen.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                flatten(item)
        elif isinstance(value, list | tuple):
            for item in value:
                flatten(item)

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> None:
        flatten(parameters)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def test_no_id_from_outside_past_the_column_range_reaches_the_database(make_app: Any, key):
    app = make_app(PROPAGATE_EXCEPTIONS=False, SENDGRID_WEBHOOK_PUBLIC_KEY=public_b64(key))
    world = seed(app)
    admin = world.admin
    token = csrf_from(admin.get("/admin/subscribers").get_data(as_text=True))
    answers: dict[str, int] = {}

    def tok(purpose: str, payload: dict[str, Any]) -> str:
        return tokens.make(purpose, payload, secret_key=app.config["SECRET_KEY"])

    with bound_integers(app) as bound:
        for huge in HUGE:
            for path in (f"/admin/subscribers/{huge}", f"/admin/lessons/{huge}",
                         f"/admin/subscribers?after={huge}", f"/admin/subscribers?before={huge}",
                         f"/admin/deliveries?page={huge}", f"/admin/subscribers?page={huge}",
                         f"/admin/subscribers?lesson={huge}",
                         f"/o/{tok('open', {'d': huge})}.gif",
                         f"/c/{tok('click', {'d': huge, 'u': 'https://example.org/'})}",
                         f"/done/{tok('complete', {'d': huge})}",
                         f"/l/{tok('web', {'d': huge})}",
                         f"/u/{tok('unsubscribe', {'s': huge})}",
                         f"/confirm/{tok('confirm', {'s': huge})}"):
                answers[f"GET {path}"] = admin.get(path).status_code
            form = {"csrf_token": token, "id": str(huge), "shown": str(huge)}
            for path in (f"/admin/subscribers/{huge}/pause", f"/admin/subscribers/{huge}/erase",
                         f"/admin/deliveries/{huge}/resend", "/admin/deliveries/resend",
                         "/admin/webhooks/retry", f"/done/{tok('complete', {'d': huge})}",
                         f"/u/{tok('unsubscribe', {'s': huge})}"):
                answers[f"POST {path}"] = admin.post(path, data=form).status_code
            body = json.dumps([{"event": "delivered", "timestamp": 1, "delivery_id": huge,
                                "email": "active@example.com"},
                               {"event": "open", "timestamp": 1, "delivery_id": str(huge),
                                "email": "active@example.com"}]).encode()
            answers[f"webhook {huge}"] = admin.post("/webhooks/sendgrid", data=body,
                                                    headers=sign(key, body)).status_code
    assert {k: v for k, v in answers.items() if v >= 500} == {}
    assert [n for n in bound if n > DB_ID_MAX] == []
    assert answers[f"GET /admin/subscribers/{2**63}"] == 404
    assert answers[f"POST /admin/deliveries/{2**63}/resend"] == 404


@pytest.fixture(scope="module")
def key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


# 2. The Host header ------------------------------------------------------------------------

def production(make_app: Any, **overrides: Any) -> Flask:
    """An app with production's host rules (the config checks are covered elsewhere)."""
    return make_app(MINICOURSE_ENV="production", BASE_URL=PUBLIC, **overrides)


@pytest.mark.parametrize("path", ["/admin", "/admin/login", "/", "/u/x", "/static/site.css"])
def test_production_refuses_a_request_for_another_host(make_app: Any, path: str):
    app = production(make_app)
    resp = app.test_client().get(path, headers={"Host": "evil.example"})
    assert resp.status_code == 400
    assert "evil.example" not in resp.headers.get("Location", "")
    assert b"BASE_URL" in resp.data


def test_production_redirects_carry_base_urls_scheme_and_host(make_app: Any):
    """Plain http behind a TLS-terminating proxy still redirects to https."""
    app = production(make_app)
    client = app.test_client()
    for host in ("course.example.com", "COURSE.example.com", "course.example.com:443"):
        resp = client.get("/admin", base_url="http://course.example.com",
                          headers={"Host": host})
        assert resp.status_code == 308
        assert resp.headers["Location"] == f"{PUBLIC}/admin/"
    resp = client.get("/admin/", base_url=PUBLIC)
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/admin/login")


def test_behind_a_proxy_the_forwarded_host_is_the_one_judged(make_app: Any):
    app = production(make_app, PROXY_COUNT=1)
    client = app.test_client()
    ok = client.get("/admin", headers={"Host": "app:8000", "X-Forwarded-Proto": "http",
                                       "X-Forwarded-Host": "course.example.com"})
    assert ok.status_code == 308 and ok.headers["Location"] == f"{PUBLIC}/admin/"
    bad = client.get("/admin", headers={"Host": "course.example.com",
                                        "X-Forwarded-Host": "evil.example"})
    assert bad.status_code == 400


def test_the_first_refusal_says_why_in_the_log_then_the_rest_are_quiet(make_app: Any,
                                                                       caplog: Any):
    """A proxy that drops the Host header makes every request a 400: the owner must be
    told once, and a flood of bad hosts must not flood the log."""
    app = production(make_app)
    client = app.test_client()
    with caplog.at_level(logging.DEBUG, logger="course.security"):
        for host in ("127.0.0.1:8000", "evil.example", "evil.example"):
            assert client.get("/", headers={"Host": host}).status_code == 400
    records = [r for r in caplog.records if r.name == "course.security"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "'127.0.0.1:8000'" in records[0].getMessage()
    assert "must pass the Host header" in records[0].getMessage()


def test_health_checks_answer_any_host_in_production(make_app: Any):
    app = production(make_app)
    resp = app.test_client().get("/healthz", headers={"Host": "10.0.0.5:8000"})
    assert resp.status_code == 200


def test_an_admin_signs_in_over_the_public_address_in_production(make_app: Any):
    """The https scheme turns on Flask-WTF's strict Referer check; a browser passes it."""
    app = production(make_app)
    from course.admin_accounts import create_admin

    with app.app_context():
        create_admin("owner@example.com", "a long and secret passphrase")
    client = app.test_client()
    page = client.get("/admin/login", base_url=PUBLIC)
    assert page.status_code == 200
    resp = client.post("/admin/login", base_url=PUBLIC,
                       headers={"Referer": f"{PUBLIC}/admin/login"},
                       data={"email": "owner@example.com",
                             "password": "a long and secret passphrase",
                             "csrf_token": csrf_from(page.get_data(as_text=True))})
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/dashboard"
    assert client.get("/admin/dashboard", base_url=PUBLIC).status_code == 200


def test_development_answers_any_host(app: Flask):
    """A newcomer may open localhost or 127.0.0.1 or a LAN address: no refusal there."""
    resp = app.test_client().get("/admin", headers={"Host": "192.168.1.20:5000"})
    assert resp.status_code == 308


# 3. Caching --------------------------------------------------------------------------------

# Files the same for everyone, with no personal data: caches may keep them.
PUBLIC_FILES = {"static", "favicon", "public.author_photo"}


def test_every_page_says_no_store_and_static_files_do_not(make_app: Any):
    app = make_app(PROPAGATE_EXCEPTIONS=False)
    world = seed(app)
    cached = {}
    for rule in rules(app, {"GET"}):
        with app.app_context():
            path = world.path(rule)
        resp = world.admin.get(path)
        header = resp.headers.get("Cache-Control", "")
        if rule.endpoint in PUBLIC_FILES:
            assert resp.status_code == 200 and "no-store" not in header
        elif "no-store" not in header:
            cached[path] = (resp.status_code, header)
    assert cached == {}
    # The pages the issue named, by hand as well, signed out.
    with app.app_context():
        for path in (f"/u/{tokens.make('unsubscribe', {'s': world.active})}",
                     f"/l/{tokens.make('web', {'d': world.delivery})}",
                     f"/done/{tokens.make('complete', {'d': world.delivery})}",
                     f"/confirm/{tokens.make('confirm', {'s': world.pending})}",
                     "/admin/login", "/no-such-page"):
            assert "no-store" in app.test_client().get(path).headers["Cache-Control"], path


# 4. Chunked bodies -------------------------------------------------------------------------

@pytest.fixture
def serve() -> Iterator[Any]:
    """Serve an app over a real socket with werkzeug's server, which de-chunks bodies."""
    servers: list[tuple[BaseWSGIServer, threading.Thread]] = []

    def start(app: Flask) -> int:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server.server_port

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join(5)
        server.server_close()


def post_chunked(port: int, path: str, body: bytes, content_type: str,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """POST ``body`` with ``Transfer-Encoding: chunked`` (no Content-Length), in 100-byte
    chunks, and return the status and body of the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        chunks = (body[i:i + 100] for i in range(0, len(body), 100))
        conn.request("POST", path, body=chunks, encode_chunked=True,
                     headers={"Content-Type": content_type, "Transfer-Encoding": "chunked",
                              **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_chunked_form_past_the_limit_is_a_413(make_app: Any, serve: Any):
    app = make_app(MAX_CONTENT_LENGTH=1024, PROPAGATE_EXCEPTIONS=False)
    port = serve(app)
    form = "application/x-www-form-urlencoded"
    status, _ = post_chunked(port, "/", b"email=a%40example.com&name=" + b"x" * 4000, form)
    assert status == 413
    # Under the limit the body arrives whole: the form is read (and refused for its
    # missing CSRF token, which is the form's answer, not the size's).
    status, page = post_chunked(port, "/", b"email=a%40example.com&name=Ada", form)
    assert status == 400 and b"expired" in page


def test_the_webhook_reads_a_chunked_body_to_its_own_limit_and_no_further(
        make_app: Any, serve: Any, key: Any):
    app = make_app(MAX_CONTENT_LENGTH=1024, PROPAGATE_EXCEPTIONS=False,
                   SENDGRID_WEBHOOK_PUBLIC_KEY=public_b64(key))
    with app.app_context():
        d = lesson_delivery()
        batch = [{"event": "deferred", "timestamp": 1, "delivery_id": str(d.id),
                  "email": "ada@example.org", "attempt": str(i), "response": "x" * 100}
                 for i in range(40)]
    body = json.dumps(batch).encode()
    assert len(body) > 4 * 1024
    port = serve(app)
    for limit, expected in ((len(body), 200), (len(body) + 1, 200), (len(body) - 1, 413)):
        app.config["SENDGRID_WEBHOOK_MAX_BYTES"] = limit
        status, answer = post_chunked(port, "/webhooks/sendgrid", body, "application/json",
                                      headers=sign(key, body))
        assert status == expected, (limit, answer[:200])
        if expected == 200:
            assert json.loads(answer)["received"] == 40
