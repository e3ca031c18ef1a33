"""Subscribers as CSV: the columns, spreadsheet-safe cells, and one import row's validation.

The admin export (``course/admin/export.py``) writes what ``flask subscribers import``
(``course/cli_subscribers.py``) reads, so a list moves between two installations intact.
Everything here is plain functions on plain data: no database, no request.

Cells a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return) are written with a leading ``'`` (OWASP "CSV injection"), and the
import takes that quote off again, so ``=HYPERLINK(…)`` as a name survives the round trip
as the same text. The rule is exactly reversible: a cell that already starts with ``'``
followed by such a character gets one more quote, so no text is ever changed on the way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .lessons import Course
from .models import Status
from .schedule import next_slot, valid_timezone
from .signup_input import AddressError, check_address, clean_name

# Excel reads a UTF-8 file as UTF-8 only when it starts with a byte order mark; the
# import reads the file as "utf-8-sig", which takes the mark when there is one.
BOM = "\ufeff"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

EXPORT_COLUMNS = (
    "email",
    "name",
    "status",
    "timezone",
    "joined_at",
    "confirmed_at",
    "consent_at",
    "consent_ip",
    "consent_version",
    "next_lesson",
    "lessons_sent",
    "lessons_opened",
    "lessons_clicked",
    "lessons_done",
    "completed_at",
    "finished_at",
    "unsubscribed_at",
)

# Header names the import understands, and the other spellings it accepts for them.
# Every other column (the export's lesson counts, completed_at, anything a tool adds) is
# ignored: counts are history that only deliveries can make.
IMPORT_COLUMNS: dict[str, tuple[str, ...]] = {
    "email": ("email", "email_address", "e-mail"),
    "name": ("name", "first_name"),
    "timezone": ("timezone", "time_zone", "tz"),
    "status": ("status",),
    "next_lesson": ("next_lesson", "lesson", "starting_lesson"),
    "consent_at": ("consent_at",),
    "consent_ip": ("consent_ip",),
    "consent_version": ("consent_version",),
    "joined_at": ("joined_at",),
    "confirmed_at": ("confirmed_at",),
    "finished_at": ("finished_at",),
    "unsubscribed_at": ("unsubscribed_at",),
}
CONSENT_VERSION_MAX = 32
# The name column's size. The signup form asks for less (a first name, ``signup.NAME_MAX``);
# an import brings the course owner's own list, whose names are kept as they are.
NAME_MAX = 100
ADDRESS_PROBLEMS = {
    "non_ascii": "has accented or non-Latin letters before the @, which cannot be sent to",
    "reserved": "is at a domain reserved for examples and tests, which never receives email",
}
IMPORT_CONSENT_VERSION = "import"


# --- spreadsheet formulas ----------------------------------------------------------------


def _needs_quote(text: str) -> bool:
    """True when a spreadsheet would read ``text`` as a formula, or when it is our quote
    in front of such text (so the quote added for it can be told from the author's)."""
    if text.startswith(FORMULA_STARTS):
        return True
    return text.startswith("'") and _needs_quote(text[1:])


def escape_cell(text: str) -> str:
    """The cell as written: a leading ``'`` when a spreadsheet would run it as a formula."""
    return "'" + text if _needs_quote(text) else text


def unescape_cell(text: str) -> str:
    """The reverse of ``escape_cell``: only a quote that ``escape_cell`` would add goes."""
    if text.startswith("'") and _needs_quote(text[1:]):
        return text[1:]
    return text


# --- export ------------------------------------------------------------------------------


def iso(value: datetime | None) -> str:
    """ISO 8601 in UTC with a ``Z`` (microseconds kept, so a round trip is exact)."""
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Counts:
    """Lessons sent, opened by a person, clicked and marked done by one subscriber."""

    sent: int = 0
    opened: int = 0
    clicked: int = 0
    done: int = 0


def export_row(sub: Mapping[Any, Any], counts: Counts) -> list[str]:
    """One subscriber (a row mapping with the model's column names) as escaped cells."""

    def when(key: str) -> str:
        value = sub[key]
        return iso(value) if isinstance(value, datetime) else ""

    cells = [
        str(sub["email"]),
        str(sub["name"] or ""),
        str(sub["status"]),
        str(sub["timezone"]),
        when("created_at"),
        when("confirmed_at"),
        when("consent_at"),
        str(sub["consent_ip"] or ""),
        str(sub["consent_version"] or ""),
        str(sub["next_position"]),
        str(counts.sent),
        str(counts.opened),
        str(counts.clicked),
        str(counts.done),
        when("completed_at"),
        when("finished_at"),
        when("unsubscribed_at"),
    ]
    return [escape_cell(cell) for cell in cells]


# --- import: the header ------------------------------------------------------------------


class HeaderError(ValueError):
    """The header row cannot be used; the message says why, in one sentence."""


def map_header(header: Sequence[str]) -> dict[str, int]:
    """Which field of a row holds each column we import (names are case-insensitive).

    When a file has two spellings of one column ("Name" and "First Name"), ours wins.
    """
    wanted = {alias: (column, rank) for column, aliases in IMPORT_COLUMNS.items()
              for rank, alias in enumerate(aliases)}
    found: dict[str, tuple[int, int]] = {}
    for index, raw in enumerate(header):
        name = unescape_cell(raw).strip().lower().replace(" ", "_")
        if name not in wanted:
            continue
        column, rank = wanted[name]
        if column in found and found[column][1] == rank:
            raise HeaderError(f"the header has two {name} columns "
                              f"(fields {found[column][0] + 1} and {index + 1})")
        if column not in found or rank < found[column][1]:
            found[column] = (index, rank)
    if "email" not in found:
        shown = ", ".join(h.strip() for h in header if h.strip())[:200] or "nothing"
        raise HeaderError(f"the header row has no email column (it has: {shown})")
    return {column: index for column, (index, _rank) in found.items()}


# --- import: one row ---------------------------------------------------------------------


class RowError(ValueError):
    """A row that cannot be imported; the message is the reason shown after FILE:LINE."""


@dataclass(frozen=True)
class ImportOptions:
    """What applies to every row: the course, the import time and the command's options."""

    course: Course
    now: datetime
    consent_note: str = ""
    confirm: bool = False
    # Addresses at reserved test domains (``example.test``): yes in development only.
    allow_test_domains: bool = True


@dataclass(frozen=True)
class ImportRow:
    """A valid row, cleaned: everything a new Subscriber needs."""

    email: str
    name: str
    timezone: str
    status: str
    next_position: int
    consent_at: datetime
    consent_ip: str
    consent_version: str
    joined_at: datetime
    confirmed_at: datetime | None
    finished_at: datetime | None
    unsubscribed_at: datetime | None


def parse_time(text: str, column: str, now: datetime) -> datetime | None:
    """An ISO 8601 time (a time without an offset is UTC); blank is None; never future."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise RowError(f"{column} {text[:40]!r} is not an ISO 8601 time "
                       "such as 2025-03-01T09:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    if value > now:
        raise RowError(f"{column} {text[:40]!r} is in the future")
    return value


def _lesson(text: str, status: str, course: Course) -> int:
    past_end = max((lesson.position for lesson in course.lessons), default=0) + 1
    if not text:
        return past_end if status == Status.FINISHED else 1
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise RowError(f"next_lesson {text[:20]!r} is not a lesson number")
    position = int(text)
    if course.lesson_at(position) is None and position != past_end:
        raise RowError(f"next_lesson {position} is not in the course (1 to {past_end - 1}, "
                       f"or {past_end} for someone who has had every lesson)")
    return position


def _status(text: str, options: ImportOptions) -> str:
    status = text.lower() or Status.ACTIVE
    if status not in Status.ALL:
        raise RowError(f"status {text[:20]!r} is not one of {', '.join(Status.ALL)}")
    if status == Status.ACTIVE and options.confirm:
        return Status.PENDING
    return status


def validate_row(fields: Mapping[str, str], options: ImportOptions) -> ImportRow:
    """Check one row with the signup form's rules; raise RowError with the first fault.

    ``fields`` maps our column names to the raw cell text (absent columns are missing).
    """
    def cell(column: str) -> str:
        return unescape_cell(fields.get(column, "")).strip()

    raw_email = cell("email")
    if not raw_email:
        raise RowError("no email address")
    try:
        email = check_address(raw_email, allow_test_domains=options.allow_test_domains)
    except AddressError as exc:
        problem = ADDRESS_PROBLEMS.get(exc.kind, "is not a valid email address")
        raise RowError(f"{raw_email[:80]!r} {problem}") from None
    name = clean_name(cell("name"))
    if len(name) > NAME_MAX:
        raise RowError(f"the name is longer than {NAME_MAX} characters")
    timezone = cell("timezone") or options.course.default_timezone
    if not valid_timezone(timezone):
        raise RowError(f"time zone {timezone[:64]!r} is not an IANA name such as Europe/Paris")
    status = _status(cell("status"), options)
    position = _lesson(cell("next_lesson"), status, options.course)

    consent_at = parse_time(cell("consent_at"), "consent_at", options.now)
    version = clean_name(cell("consent_version"))
    if consent_at is None:
        if not options.consent_note:
            raise RowError("no consent_at (when they agreed to get the course); "
                           "add the column, or run with --consent-note")
        consent_at = options.now  # when the note vouching for their consent was recorded
    version = version or options.consent_note or IMPORT_CONSENT_VERSION
    if len(version) > CONSENT_VERSION_MAX:
        raise RowError(f"consent_version is longer than {CONSENT_VERSION_MAX} characters")
    consent_ip = cell("consent_ip")
    if consent_ip:
        try:
            consent_ip = str(ipaddress.ip_address(consent_ip))
        except ValueError:
            raise RowError(f"consent_ip {consent_ip[:45]!r} is not an IP address") from None

    now = options.now
    confirmed_at = parse_time(cell("confirmed_at"), "confirmed_at", now)
    if status == Status.PENDING:
        confirmed_at = None  # --confirm asks them again; confirming sets it
    return ImportRow(
        email=email,
        name=name,
        timezone=timezone,
        status=status,
        next_position=position,
        consent_at=consent_at,
        consent_ip=consent_ip,
        consent_version=version,
        joined_at=parse_time(cell("joined_at"), "joined_at", now) or now,
        confirmed_at=confirmed_at,
        finished_at=parse_time(cell("finished_at"), "finished_at", now),
        unsubscribed_at=parse_time(cell("unsubscribed_at"), "unsubscribed_at", now),
    )


def first_send_at(now: datetime, timezone: str, course: Course) -> datetime:
    """An imported active subscriber's next lesson: their next local send hour, as after
    a resume (so nobody gets a lesson at 3 a.m. because the import ran then)."""
    return next_slot(now, timezone, course.rules)
