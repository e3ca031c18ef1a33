"""Command-line entry points, registered on the app as ``flask …`` commands."""

from __future__ import annotations

from flask import Flask


def register_cli(app: Flask) -> None:
    from .cli_admin import admin_cli
    from .cli_course import course_cli
    from .cli_subscribers import subscribers_cli
    from .devserver import dev

    app.cli.add_command(course_cli)
    app.cli.add_command(admin_cli)
    app.cli.add_command(subscribers_cli)
    app.cli.add_command(dev)
