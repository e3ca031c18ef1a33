"""The WSGI entry point: ``gunicorn wsgi:app`` (or ``flask --app wsgi run``)."""

from __future__ import annotations

import sys

from course import ConfigError, CourseError, create_app

try:
    app = create_app()
except (ConfigError, CourseError) as exc:
    print(f"minicourse: {exc}", file=sys.stderr)
    raise SystemExit(1) from None
