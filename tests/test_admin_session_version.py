"""A copied admin session cookie dies with the session: after logout, a new password, or
disabling the account, a copy replayed from another browser is refused and changes nothing.

Each test copies the signed-in browser's cookie into a second, real test client (another
"browser") before the event, and replays it afterwards. Every admin request checks the
session version (``course/admin/auth.py``), so the copy fails on its very next request.
"""

from __future__ import annotations

import re

import pytest
from conftest import csrf_from
from flask import Flask
from flask.testing import FlaskClient
from test_admin import EMAIL, PASSWORD, add_admin, post_login

from course.admin_accounts import end_sessions, get_admin
from course.extensions import db, login_manager
from course.models import AdminUser, Status, Subscriber
from tests.helpers import add_subscriber


def signed_in(app: Flask) -> FlaskClient:
    client = app.test_client()
    assert post_login(client, EMAIL, PASSWORD).status_code == 302
    return client


def copy_of(app: Flask, browser: FlaskClient) -> FlaskClient:
    """A second browser holding a copy of ``browser``'s session cookie, as a thief would."""
    cookie = browser.get_cookie("session")
    assert cookie is not None
    other = app.test_client()
    other.set_cookie("session", cookie.value, domain="localhost")
    return other


def refused(client: FlaskClient) -> bool:
    resp = client.get("/admin/subscribers")
    return resp.status_code == 302 and resp.headers["Location"].startswith("/admin/login")


def logout(client: FlaskClient) -> None:
    token = csrf_from(client.get("/admin/subscribers").get_data(as_text=True))
    resp = client.post("/admin/logout", data={"csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/login"


def version(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(db.select(AdminUser.session_version)
                                 .where(AdminUser.email == EMAIL))


def cli(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=["admin", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_cookie_copied_before_logout_is_refused_after_it_and_changes_nothing(app):
    add_admin(app)
    with app.app_context():
        sub_id = add_subscriber("reader@example.org").id
    browser = signed_in(app)
    thief = copy_of(app, browser)
    # Before logout the copy works (no IP or User-Agent binding: see course/__init__.py),
    # and the thief can read a CSRF token off a page, as a real attacker would.
    page = thief.get(f"/admin/subscribers/{sub_id}")
    assert page.status_code == 200
    token = csrf_from(page.get_data(as_text=True))
    before = version(app)

    logout(browser)

    assert version(app) == before + 1
    assert refused(thief) and refused(browser)
    resp = thief.post(f"/admin/subscribers/{sub_id}/pause", data={"csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/admin/login")
    with app.app_context():
        assert db.session.get(Subscriber, sub_id).status == Status.ACTIVE
    # The cookie still carries the admin's id: it is the version that no longer matches.
    assert refused(copy_of(app, thief))


def test_logging_in_again_after_logout_works_and_old_copies_stay_dead(app):
    add_admin(app)
    browser = signed_in(app)
    stale = copy_of(app, browser)
    logout(browser)
    again = signed_in(app)
    assert not refused(again)
    assert refused(stale)


def test_logout_on_one_device_signs_the_admin_out_on_every_device(app):
    """The documented price of a per-admin version: no server-side session store needed."""
    add_admin(app)
    add_admin(app, "colleague@example.com")
    laptop, phone = signed_in(app), signed_in(app)
    colleague = app.test_client()
    assert post_login(colleague, "colleague@example.com", PASSWORD).status_code == 302
    logout(laptop)
    assert refused(phone)
    assert not refused(colleague)  # another admin's sessions are untouched


@pytest.mark.parametrize("command", ["reset", "disable"])
def test_a_cookie_copied_before_a_reset_or_disable_is_refused_after_it(app, command):
    add_admin(app)
    browser = signed_in(app)
    thief = copy_of(app, browser)
    assert not refused(thief)
    output = cli(app, command, EMAIL)
    assert refused(thief) and refused(browser)
    if command == "disable":
        cli(app, "enable", EMAIL)
        assert refused(thief)  # enabling again brings no old session back
        assert not refused(signed_in(app))
    else:
        new = re.search(r"shown only this once\): (\S+)", output).group(1)
        fresh = app.test_client()
        assert post_login(fresh, EMAIL, new).status_code == 302
        assert not refused(fresh) and refused(thief)


def test_two_bumps_made_from_stale_copies_of_the_row_both_count(app):
    """The bump is one SQL increment, not a read-modify-write: two requests that loaded the
    admin at the same version (say, logouts in two tabs) leave it two higher."""
    add_admin(app)
    start = version(app)
    with app.app_context():
        one = get_admin(EMAIL)
        with app.app_context():  # another request, with its own session and copy of the row
            two = get_admin(EMAIL)
            assert two.session_version == one.session_version == start
            end_sessions(two)
            db.session.commit()
        end_sessions(one)
        db.session.commit()
    assert version(app) == start + 2


def test_flask_login_session_protection_is_off_because_it_did_nothing(app):
    """Flask-Login's "strong" mode only marks a *permanent* session not fresh (ours are
    permanent), so it gave a false sense of safety; a copy from another address and
    browser works exactly until the version changes."""
    assert login_manager.session_protection is None
    add_admin(app)
    browser = signed_in(app)
    thief = copy_of(app, browser)
    resp = thief.get("/admin/subscribers", headers={"User-Agent": "curl/8"},
                     environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert resp.status_code == 200
