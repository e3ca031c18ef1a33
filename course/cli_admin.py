"""``flask admin``: create, list, disable, enable and reset admin accounts from a shell.

Every mistake is a one-line error with a non-zero exit code, never a traceback. Disabling
an account or changing its password ends its open sessions on their next request.
"""

from __future__ import annotations

from datetime import datetime

import click
from flask.cli import with_appcontext

from . import admin_accounts


@click.group("admin")
def admin_cli() -> None:
    """Manage admin accounts."""


def _address(email: str) -> str:
    from .signup import normalise_email

    address = normalise_email(email)
    if address is None:
        raise click.BadParameter(f"{email!r} is not a valid email address", param_hint="EMAIL")
    return address


def _password(generate: bool) -> str | None:
    """None when generating; else a password typed twice, hidden."""
    if generate:
        return None
    password: str = click.prompt(
        f"Password (at least {admin_accounts.PASSWORD_MIN} characters)",
        hide_input=True,
        confirmation_prompt=True,
    )
    return password


@admin_cli.command("create")
@click.argument("email")
@click.option("--generate", is_flag=True,
              help="generate a strong password and print it once instead of prompting")
@with_appcontext
def create(email: str, generate: bool) -> None:
    """Create an admin account that can sign in at /admin/login."""
    address = _address(email)
    if admin_accounts.find_admin(address) is not None:
        raise click.ClickException(f"an admin with the email {address} already exists")
    try:
        user, generated = admin_accounts.create_admin(address, _password(generate))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Created admin {user.email}.")
    if generated:
        click.echo(f"Password (shown only this once): {generated}")


@admin_cli.command("set-password")
@click.argument("email")
@click.option("--generate", is_flag=True,
              help="generate a strong password and print it once instead of prompting")
@with_appcontext
def set_password(email: str, generate: bool) -> None:
    """Give an existing admin a new password (for a forgotten one)."""
    address = _address(email)
    if admin_accounts.find_admin(address) is None:
        raise click.ClickException(f"there is no admin with the email {address}")
    try:
        generated = admin_accounts.set_password(address, _password(generate))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Password changed for {address}; its open sessions have ended.")
    if generated:
        click.echo(f"Password (shown only this once): {generated}")


def _existing(email: str) -> str:
    """The stored address of an existing admin, or a one-line error (exit code 1)."""
    try:
        return admin_accounts.get_admin(email).email
    except admin_accounts.UnknownAdmin as exc:
        raise click.ClickException(str(exc)) from None


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "never"


@admin_cli.command("list")
@with_appcontext
def list_admins() -> None:
    """Show every admin account: email, status, when created, last sign-in."""
    users = admin_accounts.list_admins()
    if not users:
        click.echo("There are no admin accounts. Create one with: flask admin create EMAIL")
        return
    rows = [("EMAIL", "STATUS", "CREATED", "LAST LOGIN")] + [
        (u.email, "active" if u.active else "disabled", _when(u.created_at),
         _when(u.last_login_at))
        for u in users
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for *first, last in rows:
        padded = [cell.ljust(width) for cell, width in zip(first, widths, strict=True)]
        click.echo("  ".join([*padded, last]))


@admin_cli.command("disable")
@click.argument("email")
@with_appcontext
def disable(email: str) -> None:
    """Stop an admin from signing in, and end its open sessions at once."""
    address = _existing(email)
    if admin_accounts.set_active(address, False):
        click.echo(f"Disabled admin {address}; its open sessions have ended.")
    else:
        click.echo(f"Admin {address} was already disabled.")


@admin_cli.command("enable")
@click.argument("email")
@with_appcontext
def enable(email: str) -> None:
    """Let a disabled admin sign in again."""
    address = _existing(email)
    if admin_accounts.set_active(address, True):
        click.echo(f"Enabled admin {address}.")
    else:
        click.echo(f"Admin {address} was already active.")


@admin_cli.command("reset")
@click.argument("email")
@click.option("--prompt", "prompt", is_flag=True,
              help="type the new password (twice, hidden) instead of generating one")
@with_appcontext
def reset(email: str, prompt: bool) -> None:
    """Give an admin a new generated password, printed once, and end its open sessions."""
    address = _existing(email)
    try:
        generated = admin_accounts.set_password(address, _password(generate=not prompt))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Password reset for {address}; its open sessions have ended.")
    if generated:
        click.echo(f"New password (shown only this once): {generated}")
