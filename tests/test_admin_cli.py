"""Admin accounts from the shell: ``flask admin create`` / ``set-password`` and ensure_admin."""

from __future__ import annotations

import re

import pytest

from course.admin_accounts import DEFAULT_ADMIN_EMAIL, create_admin, ensure_admin
from course.extensions import db
from course.models import AdminUser

PASSWORD = "a long enough password"


def admins(app) -> dict[str, AdminUser]:
    with app.app_context():
        return {u.email: u for u in db.session.scalars(db.select(AdminUser))}


def check(app, email: str, password: str) -> bool:
    with app.app_context():
        user = db.session.scalar(db.select(AdminUser).where(AdminUser.email == email))
        return user is not None and user.check_password(password)


def test_create_prompts_twice_for_a_hidden_password(app):
    result = app.test_cli_runner().invoke(
        args=["admin", "create", "Owner@Example.com"], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("Password") >= 1 and "Repeat for confirmation" in result.output
    assert PASSWORD not in result.output  # hidden input is not echoed
    assert "Created admin owner@example.com." in result.output
    assert check(app, "owner@example.com", PASSWORD)
    assert admins(app)["owner@example.com"].password_hash != PASSWORD


def test_create_with_generate_prints_a_working_password_once(app):
    result = app.test_cli_runner().invoke(args=["admin", "create", "o@example.com", "--generate"])
    assert result.exit_code == 0, result.output
    match = re.search(r"Password \(shown only this once\): (\S+)", result.output)
    assert match and len(match.group(1)) >= 16
    assert check(app, "o@example.com", match.group(1))


def test_create_refuses_a_duplicate_email_whatever_its_case(app):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["admin", "create", "o@example.com", "--generate"]).exit_code == 0
    result = runner.invoke(args=["admin", "create", "O@EXAMPLE.COM", "--generate"])
    assert result.exit_code == 1
    assert "Error: an admin with the email o@example.com already exists" in result.output
    assert "Traceback" not in result.output
    assert len(admins(app)) == 1


@pytest.mark.parametrize("email", ["not-an-email", "admin@localhost", "a@b@example.com", ""])
def test_create_refuses_a_bad_email(app, email):
    result = app.test_cli_runner().invoke(args=["admin", "create", email, "--generate"])
    assert result.exit_code == 2
    assert "is not a valid email address" in result.output
    assert "Traceback" not in result.output
    assert admins(app) == {}


def test_create_refuses_a_short_password(app):
    result = app.test_cli_runner().invoke(
        args=["admin", "create", "o@example.com"], input="short pw\nshort pw\n"
    )
    assert result.exit_code == 1
    assert "at least 12 characters" in result.output
    assert admins(app) == {}


def test_set_password_replaces_the_old_one(app):
    runner = app.test_cli_runner()
    runner.invoke(args=["admin", "create", "o@example.com"], input=f"{PASSWORD}\n{PASSWORD}\n")
    new = "a brand new password"
    result = runner.invoke(args=["admin", "set-password", "o@example.com"],
                           input=f"{new}\n{new}\n")
    assert result.exit_code == 0, result.output
    assert check(app, "o@example.com", new) and not check(app, "o@example.com", PASSWORD)
    missing = runner.invoke(args=["admin", "set-password", "nobody@example.com", "--generate"])
    assert missing.exit_code == 1 and "no admin with the email" in missing.output


def test_create_admin_function_validates_its_input(app):
    with app.app_context():
        with pytest.raises(ValueError, match="not a valid email"):
            create_admin("nope")
        with pytest.raises(ValueError, match="at least 12"):
            create_admin("o@example.com", "x" * 11)
        user, generated = create_admin("o@example.com", "x" * 12)
        assert generated is None and user.email == "o@example.com"
        with pytest.raises(ValueError, match="already exists"):
            create_admin("O@example.com")


def test_ensure_admin_creates_a_first_admin_once(app):
    with app.app_context():
        created = ensure_admin()
        assert created is not None
        email, password = created
        assert email == DEFAULT_ADMIN_EMAIL and len(password) >= 12
        assert ensure_admin() is None
        assert ensure_admin("someone@example.com") is None
    assert list(admins(app)) == [DEFAULT_ADMIN_EMAIL]
    assert check(app, email, password)


def test_ensure_admin_does_nothing_when_an_admin_exists(app):
    with app.app_context():
        create_admin("owner@example.com", PASSWORD)
        assert ensure_admin() is None
    assert list(admins(app)) == ["owner@example.com"]
