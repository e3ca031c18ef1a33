"""Admin sessions end when they should: on disable, on a new password, and on expiry.

A session carries a fingerprint of the admin's password hash and loads only while the
account is active and the fingerprint matches (``course/admin/auth.py``), so the shell
commands ``flask admin disable``, ``reset`` and ``set-password`` sign the admin out of
every browser on its next request.
"""

from __future__ import annotations

import re
import time

from flask import Flask
from flask.testing import FlaskClient
from test_admin import EMAIL, PASSWORD, add_admin, post_login

from course.admin.auth import SESSION_FINGERPRINT

OTHER = "colleague@example.com"


def signed_in(app: Flask, email: str = EMAIL, password: str = PASSWORD) -> FlaskClient:
    client = app.test_client()
    assert post_login(client, email, password).status_code == 302
    assert client.get("/admin/subscribers").status_code == 200
    return client


def signed_out(client: FlaskClient) -> bool:
    """True when the admin sends this client to the login page."""
    resp = client.get("/admin/subscribers")
    return resp.status_code == 302 and resp.headers["Location"].startswith("/admin/login")


def cli(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=["admin", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_disabling_an_admin_ends_its_open_sessions_at_once(app):
    add_admin(app)
    add_admin(app, OTHER)
    laptop, phone, colleague = signed_in(app), signed_in(app), signed_in(app, OTHER)
    cli(app, "disable", EMAIL)
    assert signed_out(laptop) and signed_out(phone)
    assert not signed_out(colleague)  # other admins stay signed in
    assert "Wrong email or password." in post_login(
        app.test_client(), EMAIL, PASSWORD).get_data(as_text=True)
    cli(app, "enable", EMAIL)
    assert not signed_out(signed_in(app))


def test_a_reset_password_signs_the_admin_out_everywhere(app):
    add_admin(app)
    add_admin(app, OTHER)
    laptop, phone, colleague = signed_in(app), signed_in(app), signed_in(app, OTHER)
    output = cli(app, "reset", EMAIL)
    new = re.search(r"shown only this once\): (\S+)", output).group(1)
    assert signed_out(laptop) and signed_out(phone)
    assert not signed_out(colleague)
    # The old password no longer opens a session; the new one does.
    assert post_login(app.test_client(), EMAIL, PASSWORD).status_code == 200
    assert not signed_out(signed_in(app, EMAIL, new))


def test_set_password_signs_the_admin_out_too(app):
    add_admin(app)
    laptop = signed_in(app)
    new = "a completely new password"
    cli_result = app.test_cli_runner().invoke(args=["admin", "set-password", EMAIL],
                                              input=f"{new}\n{new}\n")
    assert cli_result.exit_code == 0, cli_result.output
    assert signed_out(laptop)


def test_a_session_with_a_wrong_fingerprint_loads_no_one(app):
    add_admin(app)
    client = signed_in(app)
    with client.session_transaction() as session:
        session[SESSION_FINGERPRINT] = "0" * 32
    assert signed_out(client)


def test_a_session_without_a_fingerprint_loads_no_one(app):
    # A session from before fingerprints existed (or hand-made) is not enough.
    add_admin(app)
    client = signed_in(app)
    with client.session_transaction() as session:
        del session[SESSION_FINGERPRINT]
    assert signed_out(client)


def test_enabling_an_admin_again_does_not_bring_back_its_old_sessions(app):
    add_admin(app)
    client, unused = signed_in(app), signed_in(app)
    cli(app, "disable", EMAIL)
    assert signed_out(client)
    cli(app, "enable", EMAIL)
    # Neither the session seen while disabled nor one that made no request meanwhile.
    assert signed_out(client) and signed_out(unused)
    assert post_login(client, EMAIL, PASSWORD).status_code == 302
    assert not signed_out(client)


def test_a_session_cookie_is_refused_by_the_server_once_its_lifetime_is_over(make_app):
    """The cookie's Expires is only advice to the browser: a copy of the cookie replayed
    after ``ADMIN_SESSION_SECONDS`` must be refused by the server itself."""
    lifetime = 1  # seconds
    app = make_app(PERMANENT_SESSION_LIFETIME=lifetime)
    add_admin(app)
    client = signed_in(app)
    cookie = client.get_cookie("session")
    assert cookie is not None
    replay = app.test_client()
    replay.set_cookie("session", cookie.value, domain="localhost")
    assert not signed_out(replay)  # the copy works while the session is fresh
    time.sleep(lifetime + 1.2)
    replay.set_cookie("session", cookie.value, domain="localhost")
    assert signed_out(replay)
