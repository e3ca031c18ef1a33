"""The outbox viewer: read the ``.eml`` files the outbox mail backend wrote.

File names come from the URL, so only the backend's own names (32 hex digits ``.eml``)
are ever opened. The HTML part is served on its own URL with a sandboxing CSP and shown
in a sandboxed iframe: an email's markup never runs with the admin's privileges.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path

from flask import abort, current_app, render_template
from werkzeug.wrappers import Response

from ..security import CSP
from . import bp

NAME_RE = re.compile(r"^[0-9a-f]{32}\.eml$")
LIST_LIMIT = 200
HTML_CSP = (
    "sandbox; default-src 'none'; img-src * data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'"
)
DETAIL_CSP = CSP + "; frame-src 'self'"


@dataclass(frozen=True)
class OutboxEntry:
    name: str
    date: datetime
    to: str
    subject: str


def outbox_enabled() -> bool:
    return bool(current_app.config["MAIL_BACKEND"] == "outbox")


def outbox_dir() -> Path:
    return Path(current_app.config["OUTBOX_DIR"])


def _message_date(header: str | None, fallback: float) -> datetime:
    if header:
        try:
            parsed = parsedate_to_datetime(header)
            if parsed.tzinfo is not None:
                return parsed.astimezone(UTC)
        except (TypeError, ValueError):
            pass
    return datetime.fromtimestamp(fallback, UTC)


def list_messages(limit: int = LIST_LIMIT) -> tuple[list[OutboxEntry], int]:
    """The newest ``limit`` messages (newest first) and how many there are in all."""
    found: list[tuple[float, str]] = []
    try:
        with os.scandir(outbox_dir()) as it:
            for entry in it:
                if not NAME_RE.match(entry.name):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
                except OSError:
                    continue  # removed while we were listing
    except FileNotFoundError:
        return [], 0
    found.sort(reverse=True)
    entries = []
    parser = BytesHeaderParser(policy=policy.default)
    for mtime, name in found[:limit]:
        try:
            with open(outbox_dir() / name, "rb") as fh:
                headers = parser.parse(fh)
        except OSError:
            continue  # removed while we were listing
        entries.append(OutboxEntry(name, _message_date(headers["Date"], mtime),
                                   str(headers["To"] or ""), str(headers["Subject"] or "")))
    return entries, len(found)


def load_message(name: str) -> EmailMessage:
    """The parsed message with this file name, or a 404 for any other name."""
    if not outbox_enabled() or not NAME_RE.match(name):
        abort(404)
    path = outbox_dir() / name
    if path.is_symlink() or not path.is_file():
        abort(404)
    try:
        with open(path, "rb") as fh:
            message = BytesParser(policy=policy.default).parse(fh)
    except OSError:
        abort(404)
    assert isinstance(message, EmailMessage)
    return message


def part_text(message: EmailMessage, subtype: str) -> str | None:
    """The decoded text of the message's ``text/<subtype>`` body, if it has one."""
    part = message.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError, KeyError):
        return "(this part could not be decoded)"


def without_open_pixel(html: str) -> str:
    """Drop the tracking pixel so looking at an email here does not count as an open."""
    base = re.escape(current_app.config["BASE_URL"])
    return re.sub(rf"<img\b[^>]*\bsrc=\"{base}/o/[^\"]*\.gif\"[^>]*>", "", html)


@bp.route("/outbox")
def outbox() -> str:
    entries, total = list_messages() if outbox_enabled() else ([], 0)
    return render_template("admin/outbox.html", entries=entries, total=total,
                           enabled=outbox_enabled(), directory=str(outbox_dir()))


@bp.route("/outbox/<name>")
def outbox_message(name: str) -> Response:
    message = load_message(name)
    page = render_template(
        "admin/outbox_message.html",
        name=name,
        headers=[(key, str(value)) for key, value in message.items()],
        subject=str(message["Subject"] or ""),
        text=part_text(message, "plain"),
        has_html=message.get_body(preferencelist=("html",)) is not None,
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = DETAIL_CSP
    return response


@bp.route("/outbox/<name>/html")
def outbox_html(name: str) -> Response:
    html = part_text(load_message(name), "html")
    if html is None:
        abort(404)
    response = Response(without_open_pixel(html), mimetype="text/html")
    response.headers["Content-Security-Policy"] = HTML_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
