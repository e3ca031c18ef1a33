"""Admin accounts, apart from HTTP: used by ``flask admin`` and the dev runner.

Callers need an app context. Passwords are only ever stored hashed; a generated one is
returned once so the caller can show it once. Signing out, disabling an account or
changing its password ends every session of that admin at once, in every browser and for
every copy of the cookie: see ``end_sessions``, ``session_fingerprint`` and the user loader
in ``course/admin/auth.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import current_app
from sqlalchemy.exc import IntegrityError

from .extensions import db
from .models import AdminUser
from .signup import normalise_email

PASSWORD_MIN = 12
PASSWORD_MAX = 1024
DEFAULT_ADMIN_EMAIL = "admin@example.com"


class UnknownAdmin(ValueError):
    """No admin account has this address."""

    def __init__(self, email: str):
        super().__init__(f"there is no admin with the email {email}")


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def check_password_rules(password: str) -> None:
    """Raise ValueError, with the reason, for a password too short or too long."""
    if len(password) < PASSWORD_MIN:
        raise ValueError(f"the password must be at least {PASSWORD_MIN} characters long")
    if len(password) > PASSWORD_MAX:
        raise ValueError(f"the password must be at most {PASSWORD_MAX} characters long")


def _choose(password: str | None) -> tuple[str, str | None]:
    """The password to set (checked), and the same again if it was generated here."""
    if password is None:
        generated = generate_password()
        return generated, generated
    check_password_rules(password)
    return password, None


def _address(email: str) -> str:
    address = normalise_email(email)
    if address is None:
        raise ValueError(f"{email!r} is not a valid email address")
    return address


def find_admin(email: str) -> AdminUser | None:
    address = normalise_email(email)
    if address is None:
        return None
    return db.session.scalar(db.select(AdminUser).where(AdminUser.email == address))


def create_admin(email: str, password: str | None = None) -> tuple[AdminUser, str | None]:
    """Create an admin. Returns it and the generated password (None when one was given)."""
    address = _address(email)
    chosen, generated = _choose(password)
    if find_admin(address) is not None:
        raise ValueError(f"an admin with the email {address} already exists")
    user = AdminUser(email=address, active=True)
    user.set_password(chosen)
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:  # created by someone else between our check and our insert
        db.session.rollback()
        raise ValueError(f"an admin with the email {address} already exists") from None
    return user, generated


def session_fingerprint(user: AdminUser) -> str:
    """What every session of ``user`` carries, and must still match on each request.

    A keyed digest of the admin's id, session version and password hash: bumping the
    version (``end_sessions``) or a new password changes it, so every session signed in
    before stops loading. The hash is in it so that a database restored or rebuilt under
    the same ``SECRET_KEY`` (the same ids and versions again) loads no old cookie. Keyed
    with ``SECRET_KEY`` so the (readable) session cookie reveals nothing of the hash.
    """
    key = str(current_app.config["SECRET_KEY"]).encode()
    message = f"{user.id}:{user.session_version}:{user.password_hash}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def end_sessions(user: AdminUser) -> None:
    """End every session of ``user``, wherever its cookie is (the caller commits).

    One atomic increment in SQL, so two at once (say, logouts in two tabs) both count.
    """
    user.session_version = AdminUser.session_version + 1  # type: ignore[assignment]


def get_admin(email: str) -> AdminUser:
    """The admin with this address, or :class:`UnknownAdmin`."""
    user = find_admin(email)
    if user is None:
        raise UnknownAdmin(email.strip())
    return user


def list_admins() -> list[AdminUser]:
    """Every admin account, oldest first."""
    return list(db.session.scalars(db.select(AdminUser).order_by(AdminUser.created_at,
                                                                AdminUser.id)))


def set_active(email: str, active: bool) -> bool:
    """Enable or disable an admin; False when it already was. A disabled admin cannot
    sign in, and its open sessions stop working on their next request."""
    user = get_admin(email)
    if user.active == active:
        return False
    user.active = active
    if not active:
        end_sessions(user)
    db.session.commit()
    return True


def set_password(email: str, password: str | None = None) -> str | None:
    """Replace an admin's password (the way back in); returns the generated one, if any.

    Every session of the admin ends, in every browser.
    """
    user = get_admin(email)
    chosen, generated = _choose(password)
    user.set_password(chosen)
    end_sessions(user)
    db.session.commit()
    return generated


def ensure_admin(default_email: str = DEFAULT_ADMIN_EMAIL) -> tuple[str, str] | None:
    """Create a first admin with a generated password if there is none, for a newcomer.

    Returns (email, password) when it created one, None when an admin already existed.
    """
    if db.session.scalar(db.select(AdminUser.id).limit(1)) is not None:
        return None
    try:
        user, password = create_admin(default_email)
    except ValueError:
        # Another process created the first admin at the same moment.
        if db.session.scalar(db.select(AdminUser.id).limit(1)) is not None:
            return None
        raise
    assert password is not None
    return user.email, password
