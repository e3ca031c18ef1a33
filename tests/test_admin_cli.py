"""Admin accounts from the shell: ``flask admin create``, ``set-password``, ``list``,
``disable``, ``enable``, ``reset``, and ensure_admin."""

from __future__ import annotations

import re
from datetime import UTC, datetime

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


# --- list, disable, enable, reset ---------------------------------------------------------


def make(app, email: str) -> None:
    with app.app_context():
        create_admin(email, PASSWORD)


def test_list_shows_every_admin_with_status_creation_and_last_login(app):
    make(app, "first@example.com")
    make(app, "second@example.com")
    with app.app_context():
        second = db.session.scalar(db.select(AdminUser).where(AdminUser.email.like("second%")))
        second.active = False
        second.last_login_at = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["admin", "list"])
    assert result.exit_code == 0, result.output
    header, first, second_line = result.output.splitlines()
    assert header.split() == ["EMAIL", "STATUS", "CREATED", "LAST", "LOGIN"]
    assert first.split()[:2] == ["first@example.com", "active"]
    assert first.endswith("never")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", first)
    assert second_line.split()[:2] == ["second@example.com", "disabled"]
    assert second_line.endswith("2026-03-04 05:06 UTC")
    # Columns line up: every row's status starts where the header's does.
    column = header.index("STATUS")
    assert first[column:].startswith("active") and second_line[column:].startswith("disabled")
    assert PASSWORD not in result.output and "pbkdf2" not in result.output.lower()


def test_list_with_no_admins_says_how_to_create_one(app):
    result = app.test_cli_runner().invoke(args=["admin", "list"])
    assert result.exit_code == 0
    assert "flask admin create EMAIL" in result.output


def test_disable_and_enable_switch_an_account_and_say_when_nothing_changed(app):
    make(app, "o@example.com")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["admin", "disable", "O@Example.com"])
    assert result.exit_code == 0, result.output
    assert "Disabled admin o@example.com" in result.output
    assert admins(app)["o@example.com"].active is False
    again = runner.invoke(args=["admin", "disable", "o@example.com"])
    assert again.exit_code == 0 and "already disabled" in again.output
    result = runner.invoke(args=["admin", "enable", "o@example.com"])
    assert result.exit_code == 0 and "Enabled admin o@example.com." in result.output
    assert admins(app)["o@example.com"].active is True
    again = runner.invoke(args=["admin", "enable", "o@example.com"])
    assert again.exit_code == 0 and "already active" in again.output


def test_reset_prints_a_new_working_password_once(app):
    make(app, "o@example.com")
    result = app.test_cli_runner().invoke(args=["admin", "reset", "o@example.com"])
    assert result.exit_code == 0, result.output
    found = re.findall(r"New password \(shown only this once\): (\S+)", result.output)
    assert len(found) == 1 and len(found[0]) >= 16
    assert result.output.count(found[0]) == 1
    assert check(app, "o@example.com", found[0]) and not check(app, "o@example.com", PASSWORD)


def test_reset_with_prompt_takes_a_typed_password_and_checks_it(app):
    make(app, "o@example.com")
    runner = app.test_cli_runner()
    new = "typed in by the owner"
    result = runner.invoke(args=["admin", "reset", "o@example.com", "--prompt"],
                           input=f"{new}\n{new}\n")
    assert result.exit_code == 0, result.output
    assert new not in result.output and "shown only this once" not in result.output
    assert check(app, "o@example.com", new)
    short = runner.invoke(args=["admin", "reset", "o@example.com", "--prompt"],
                          input="short pw\nshort pw\n")
    assert short.exit_code == 1 and "at least 12 characters" in short.output
    assert check(app, "o@example.com", new)


@pytest.mark.parametrize("command", ["disable", "enable", "reset"])
@pytest.mark.parametrize("email", ["nobody@example.com", "not-an-email"])
def test_unknown_address_is_a_one_line_error(app, command, email):
    make(app, "o@example.com")
    result = app.test_cli_runner().invoke(args=["admin", command, email])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: there is no admin with the email {email}"
    ]
    assert admins(app)["o@example.com"].active is True
    assert check(app, "o@example.com", PASSWORD)
