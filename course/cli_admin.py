"""``flask admin create`` and ``flask admin set-password``: admin accounts from a shell.

Every mistake is a one-line error with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

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
    click.echo(f"Password changed for {address}.")
    if generated:
        click.echo(f"Password (shown only this once): {generated}")
