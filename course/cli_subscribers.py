"""``flask subscribers import FILE``: bring a list of people in from a CSV file.

The file is read twice: once to check that it is UTF-8 CSV with an email column (and to
count its rows for the progress bar), so a file that is neither changes nothing; then to
import it in batches of ``BATCH`` rows, one transaction each. A bad row is printed as
``FILE:LINE: reason`` (LINE counts physical lines, the header being line 1) and never
stops the good ones. Addresses already in the database are left exactly as they are, so
running the same file again imports nothing and changes nothing.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from redis.exceptions import RedisError
from sqlalchemy import func, insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .csv_io import (
    CONSENT_VERSION_MAX,
    HeaderError,
    ImportOptions,
    ImportRow,
    RowError,
    first_send_at,
    map_header,
    validate_row,
)
from .extensions import db
from .models import Status, Subscriber
from .signup import clean_name

BATCH = 1000
DELIMITERS = (",", ";", "\t")

Reject = Callable[[int, str], None]


@click.group("subscribers")
def subscribers_cli() -> None:
    """Import subscribers from CSV (the admin's Export page writes the same format)."""


class FileProblem(click.ClickException):
    """The whole file is unusable: one line naming the file, and nothing imported."""


@dataclass
class Tally:
    imported: int = 0
    existing: int = 0
    rejected: int = 0


# --- reading the file --------------------------------------------------------------------


def _delimiter(path: Path) -> str:
    """Comma, unless the header line plainly uses semicolons or tabs (some spreadsheets)."""
    with path.open("rb") as handle:
        first = handle.readline(65536).decode("utf-8", "replace")
    counts = {d: first.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] and not counts[","] else ","


def _bad_utf8_line(path: Path) -> int:
    """The first line that is not UTF-8 (UTF-8 never hides a newline inside a character)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def _read(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Each record with the physical line it starts on (quoted newlines counted).

    A file that is not UTF-8 CSV raises FileProblem. "utf-8-sig" drops the byte order mark
    that our export (and Excel's "CSV UTF-8") writes.
    """
    line = 1
    try:
        with path.open(encoding="utf-8-sig", errors="strict", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, strict=True)
            for fields in reader:
                yield line, fields
                line = reader.line_num + 1
    except UnicodeDecodeError:
        raise FileProblem(f"{path}:{_bad_utf8_line(path) or line}: this is not UTF-8 text; "
                          "save the file as \"CSV UTF-8\" and try again") from None
    except csv.Error as exc:
        raise FileProblem(f"{path}:{line}: this is not a CSV file that can be read ({exc})") \
            from None


@dataclass(frozen=True)
class Layout:
    """What the first reading learnt: the columns we use, the header's width, the rows."""

    columns: dict[str, int]
    width: int
    rows: int


def _check(path: Path, delimiter: str) -> Layout:
    """How the file is laid out, or FileProblem if it is not UTF-8 CSV with an email column."""
    header: dict[str, int] | None = None
    width = rows = 0
    for _line, fields in _read(path, delimiter):
        if header is None:
            try:
                header = map_header(fields)
                width = len(fields)
            except HeaderError as exc:
                raise FileProblem(f"{path}:1: {exc}") from None
        elif any(fields):
            rows += 1
    if header is None:
        raise FileProblem(f"{path}: the file is empty; it needs a header row with an "
                          "email column")
    return Layout(header, width, rows)


def _fields(record: list[str], header: dict[str, int], width: int) -> dict[str, str]:
    """The cells of one record by column name; more non-empty cells than the header names
    mean the columns have slipped (an unquoted comma), so nothing in the row can be trusted."""
    if len(record) > width and any(cell.strip() for cell in record[width:]):
        raise RowError(f"{len(record)} values but the header has {width} columns "
                       "(a comma in a value that is not in quotes?)")
    return {column: record[i] for column, i in header.items() if i < len(record)}


# --- writing the database ----------------------------------------------------------------


def _values(row: ImportRow, options: ImportOptions,
            send_at: dict[str, datetime]) -> dict[str, object]:
    """One new subscriber's columns. ``send_at`` caches the next send hour per time zone."""
    due = None
    if row.status == Status.ACTIVE:
        due = send_at.get(row.timezone)
        if due is None:
            due = send_at[row.timezone] = first_send_at(options.now, row.timezone,
                                                        options.course)
    return dict(
        email=row.email, name=row.name, timezone=row.timezone, status=row.status,
        next_position=row.next_position, next_send_at=due,
        consent_at=row.consent_at, consent_ip=row.consent_ip, consent_user_agent="",
        consent_version=row.consent_version, confirmed_at=row.confirmed_at,
        finished_at=row.finished_at, unsubscribed_at=row.unsubscribed_at,
        created_at=row.joined_at, updated_at=options.now,
    )


def _insert(rows: list[ImportRow], options: ImportOptions) -> list[int] | None:
    """Insert all of ``rows`` in one transaction; None if an address was added meanwhile.

    Returns the ids of the new pending subscribers (those --confirm writes to).
    """
    send_at: dict[str, datetime] = {}
    pending_emails = [row.email for row in rows if row.status == Status.PENDING]
    try:
        db.session.execute(insert(Subscriber), [_values(row, options, send_at) for row in rows])
        pending = list(db.session.scalars(
            db.select(Subscriber.id).where(Subscriber.email.in_(pending_emails))
        )) if pending_emails else []
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return None
    return pending


def _import_batch(batch: list[tuple[int, ImportRow]], last_old_id: int,
                  options: ImportOptions, tally: Tally, reject: Reject) -> list[int]:
    """Import one batch; return the ids of new pending subscribers (to ask to confirm).

    An address with an id above ``last_old_id`` was added by this run, so this row repeats
    an earlier line of the file; one at or below it was there before the run.
    """
    if not batch:
        return []
    emails = sorted({row.email for _, row in batch})
    existing: dict[str, int] = {email: sub_id for email, sub_id in db.session.execute(
        db.select(Subscriber.email, Subscriber.id).where(Subscriber.email.in_(emails)))}
    seen: dict[str, int] = {}
    new: list[ImportRow] = []
    for line, row in batch:
        if row.email in seen:
            reject(line, f"{row.email} is already on line {seen[row.email]} of this file")
        elif existing.get(row.email, 0) > last_old_id:
            reject(line, f"{row.email} is already on an earlier line of this file")
        elif row.email in existing:
            tally.existing += 1
        else:
            new.append(row)
        seen.setdefault(row.email, line)
    if not new:
        return []
    pending = _insert(new, options)
    if pending is not None:
        tally.imported += len(new)
    else:
        # Someone signed up with one of these addresses just now: go one row at a time.
        pending = []
        for row in new:
            one = _insert([row], options)
            if one is None:
                tally.existing += 1
            else:
                tally.imported += 1
                pending += one
    return pending


def _ask_to_confirm(subscriber_ids: list[int]) -> None:
    from .signup import request_confirmations

    request_confirmations(subscriber_ids)


def _check_redis() -> None:
    from .queue import redis_connection

    try:
        redis_connection().ping()
    except RedisError as exc:
        raise click.ClickException(
            f"--confirm sends confirmation emails through the queue, but Redis does not "
            f"answer ({exc}); nothing was imported") from None


# --- the command -------------------------------------------------------------------------


@subscribers_cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--consent-note", default="", metavar="TEXT",
              help="for rows without consent_at: where their consent is on record (at most "
                   f"{CONSENT_VERSION_MAX} characters, such as 'mailchimp list 2024'); it is "
                   "kept as their consent version, with the import time")
@click.option("--confirm", is_flag=True,
              help="import people as pending and email each a confirmation link; they get "
                   "lessons only once they confirm (default: active, confirmed elsewhere)")
@with_appcontext
def import_command(file: Path, consent_note: str, confirm: bool) -> None:
    """Import subscribers from a CSV FILE with a header row and an email column.

    Understood columns (any case, others ignored): email, name, timezone, status,
    next_lesson, consent_at, consent_ip, consent_version, joined_at, confirmed_at,
    finished_at, unsubscribed_at. Existing addresses are skipped, so a second run of the
    same file changes nothing. Imported active subscribers get their next lesson at the
    course's next send hour in their time zone. Exits 1 if any row was rejected.
    """
    from .content import current_course
    from .dbcheck import schema_problem
    from .timeutil import utcnow

    note = clean_name(consent_note)
    if len(note) > CONSENT_VERSION_MAX:
        raise click.BadParameter(f"at most {CONSENT_VERSION_MAX} characters",
                                 param_hint="--consent-note")
    problem = schema_problem()
    if problem:
        raise click.ClickException(problem)
    if confirm:
        _check_redis()
    delimiter = _delimiter(file)
    layout = _check(file, delimiter)
    options = ImportOptions(
        course=current_course(), now=utcnow(), consent_note=note, confirm=confirm,
        allow_test_domains=current_app.config["MINICOURSE_ENV"] != "production")
    try:
        tally = _run(file, delimiter, layout, options)
    except SQLAlchemyError as exc:
        db.session.rollback()
        raise click.ClickException(f"{file}: the database failed ({exc.__class__.__name__}: "
                                   f"{getattr(exc, 'orig', None) or exc}); the rows before "
                                   "the failing batch are imported, run the command again "
                                   "to import the rest") from None
    click.echo(f"{file}: imported {tally.imported}, already there {tally.existing}, "
               f"rejected {tally.rejected}")
    if tally.rejected:
        sys.exit(1)


def _run(file: Path, delimiter: str, layout: Layout, options: ImportOptions) -> Tally:
    tally = Tally()
    last_old_id = db.session.scalar(db.select(func.max(Subscriber.id))) or 0
    db.session.rollback()
    stderr = sys.stderr
    # On a terminal, a rejected row's line first wipes the progress bar drawn there.
    wipe = "\r\x1b[K" if stderr.isatty() else ""

    rejected: list[tuple[int, str]] = []

    def reject(line: int, reason: str) -> None:
        rejected.append((line, reason))

    def flush(batch: list[tuple[int, ImportRow]]) -> None:
        pending = _import_batch(batch, last_old_id, options, tally, reject)
        for line, reason in sorted(rejected):  # in file order, whichever check found them
            click.echo(f"{wipe}{file}:{line}: {reason}", err=True)
        tally.rejected += len(rejected)
        rejected.clear()
        batch.clear()
        if options.confirm:
            _ask_to_confirm(pending)

    records = _read(file, delimiter)
    next(records)  # the header, checked already
    batch: list[tuple[int, ImportRow]] = []
    with click.progressbar(length=layout.rows, label=f"Importing {file}", file=stderr,
                           update_min_steps=min(BATCH, max(1, layout.rows // 100))) as bar:
        for line, record in records:
            if not any(record):
                continue  # a blank line
            bar.update(1)
            try:
                fields = _fields(record, layout.columns, layout.width)
                batch.append((line, validate_row(fields, options)))
            except RowError as exc:
                reject(line, str(exc))
            if len(batch) + len(rejected) >= BATCH:
                flush(batch)
        flush(batch)
    return tally
