"""Signing the course owner in and out.

One generic error for any failed login (so the form never tells whether an address has
an account), a rate limit on POST, and a ``next`` redirect that can only stay in /admin.

A session carries a fingerprint of the admin's session version and password hash
(``course.admin_accounts.session_fingerprint``) and loads only while the account is active
and the fingerprint still matches, checked on every admin request. Signing out bumps the
version, and so do ``flask admin disable`` and a new password: every session of that admin
ends, in every browser, including any copy of the cookie taken before. (So signing out on
one device signs the admin out everywhere: the price of needing no server-side session
store.)
"""

from __future__ import annotations

import hmac
import re
from functools import cache
from urllib.parse import unquote, urlsplit

from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.wrappers import Response
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from ..admin_accounts import end_sessions, session_fingerprint
from ..extensions import db, limiter, login_manager
from ..ids import parse_id
from ..models import AdminUser
from ..signup import normalise_email
from ..timeutil import utcnow
from . import bp

LOGIN_FAILED = "Wrong email or password."
PASSWORD_MAX = 1024
# A path in the admin: no scheme, host, backslash, control character or dot segment.
SAFE_NEXT_RE = re.compile(r"^/admin(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*/?$")


SESSION_FINGERPRINT = "admin_fingerprint"


@login_manager.user_loader
def load_user(user_id: str) -> AdminUser | None:
    """The session's admin, if still active and the session's fingerprint still matches
    (same session version, same password)."""
    admin_id = parse_id(user_id)
    user = db.session.get(AdminUser, admin_id) if admin_id is not None else None
    if user is None or not user.is_active:
        return None
    carried = session.get(SESSION_FINGERPRINT)
    if not isinstance(carried, str):
        return None
    if not hmac.compare_digest(carried.encode(), session_fingerprint(user).encode()):
        return None
    return user


@cache
def _dummy_hash() -> str:
    """Checked against when the address is unknown, so both failures take as long."""
    return generate_password_hash("not a real password, only here for timing")


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=PASSWORD_MAX)])


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a relative path inside /admin, else None (no open redirects)."""
    if not target or len(target) > 2048:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.fragment:
        return None
    if not SAFE_NEXT_RE.match(parts.path) or "\\" in target:
        return None
    # Browsers treat %2e%2e as "..", so dot segments are looked for after decoding.
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        return None
    if any(ord(c) < 0x21 or c == "\x7f" for c in target):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def authenticate(email: str, password: str) -> AdminUser | None:
    """The active admin with this email and password, or None (same cost either way)."""
    address = normalise_email(email)
    user = None
    if address is not None:
        user = db.session.scalar(db.select(AdminUser).where(AdminUser.email == address))
    if user is None:
        check_password_hash(_dummy_hash(), password)
        return None
    if not user.check_password(password) or not user.is_active:
        return None
    return user


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["LOGIN_RATE_LIMIT"], methods=["POST"])
def login() -> str | Response:
    next_url = safe_next(request.args.get("next"))
    if current_user.is_authenticated:
        return redirect(next_url or url_for("admin.dashboard"))
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        user = authenticate(form.email.data or "", form.password.data or "")
        if user is not None:
            session.clear()  # nothing from before the login survives it
            session.permanent = True
            login_user(user)
            session[SESSION_FINGERPRINT] = session_fingerprint(user)
            user.last_login_at = utcnow()
            db.session.commit()
            return redirect(next_url or url_for("admin.dashboard"))
        error = LOGIN_FAILED
    elif form.is_submitted():
        error = "Enter your email and password."
    return render_template("admin/login.html", form=form, error=error, next_url=next_url)


@bp.route("/logout", methods=["POST"])
def logout() -> Response:
    # CSRFProtect checks the token before this runs, so a cross-site POST cannot log out.
    # The admin blueprint lets only a signed-in admin get here.
    end_sessions(current_user._get_current_object())
    db.session.commit()
    logout_user()
    session.clear()
    flash("You are signed out.")
    return redirect(url_for("admin.login"))
