"""``flask subscribers import FILE``: validation with FILE:LINE reasons, batches, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import run_jobs
from flask import Flask

from course import cli_subscribers
from course.csv_io import escape_cell, unescape_cell
from course.extensions import db
from course.models import Status, Subscriber
from course.timeutil import utcnow

CONSENT = "2024-05-01T08:00:00Z"


def write(tmp_path: Path, text: str, name: str = "people.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def run(app: Flask, path: Path, *options: str):
    return app.test_cli_runner().invoke(args=["subscribers", "import", str(path), *options])


def subscribers() -> dict[str, Subscriber]:
    return {s.email: s for s in db.session.scalars(db.select(Subscriber))}


def problems(result) -> list[str]:
    """The FILE:LINE lines on stderr (the progress bar's label is the other line there)."""
    return [line for line in result.stderr.splitlines() if not line.startswith("Importing ")]


# --- the escaping rule, on its own -------------------------------------------------------


@pytest.mark.parametrize("text", [
    "", "Ann", "=1+1", "+33 6", "-", "@home", "\tTab", "\rCR", "'", "'quoted", "'=x", "''=x",
    "a=b", " =lead space",
])
def test_escaping_is_undone_exactly_by_the_import(text):
    escaped = escape_cell(text)
    assert unescape_cell(escaped) == text
    assert not escaped.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_a_quote_from_another_tool_before_plain_text_is_kept():
    assert unescape_cell("'Neill") == "'Neill"
    assert unescape_cell("'=SUM(A1)") == "=SUM(A1)"  # what our export and Excel users write


# --- a good file -------------------------------------------------------------------------


def test_a_file_from_another_tool_is_imported_as_active_subscribers_due_at_their_send_hour(
        app, tmp_path):
    path = write(tmp_path,
                 "Email Address,First Name,Time Zone,Consent_At,Lesson,Plan,Email\r\n"
                 f"x,Ann,America/New_York,{CONSENT},3,gold,Ann@Example.COM\r\n"
                 "x,  Bob\u200b  Smith ,,2024-05-01 10:00,,,bob@example.com\r\n")
    before = utcnow()
    result = run(app, path)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{path}: imported 2, already there 0, rejected 0\n"
    with app.app_context():
        subs = subscribers()
        assert set(subs) == {"ann@example.com", "bob@example.com"}
        ann, bob = subs["ann@example.com"], subs["bob@example.com"]
        assert (ann.name, ann.timezone, ann.status, ann.next_position) == (
            "Ann", "America/New_York", Status.ACTIVE, 3)
        assert ann.consent_at == datetime(2024, 5, 1, 8, tzinfo=UTC)
        assert ann.consent_version == "import"
        # No zone given: the course's default; a time without an offset is UTC.
        assert (bob.name, bob.timezone, bob.next_position) == ("Bob Smith", "UTC", 1)
        assert bob.consent_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
        # The next lesson at the next 09:00 (the course's send hour) on their own clock.
        for sub in (ann, bob):
            local = sub.next_send_at.astimezone(ZoneInfo(sub.timezone))
            assert (local.hour, local.minute) == (9, 0)
            assert before < sub.next_send_at <= before + timedelta(days=1, hours=1)


def test_semicolon_separated_files_from_spreadsheets_work(app, tmp_path):
    path = write(tmp_path, f"email;name;consent_at\nann@example.com;Ann, Jr;{CONSENT}\n")
    result = run(app, path)
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert subscribers()["ann@example.com"].name == "Ann, Jr"


# --- bad rows ----------------------------------------------------------------------------

BAD = (
    "email,name,timezone,next_lesson,consent_at,status\n"   # 1
    f"good1@example.com,One,UTC,1,{CONSENT},\n"             # 2
    f'"multi@example.com","Two\nlines, quoted",UTC,,{CONSENT},\n'  # 3-4: one record
    f"not-an-address,X,UTC,1,{CONSENT},\n"                  # 5
    f"tz@example.com,X,Mars/Olympus,1,{CONSENT},\n"         # 6
    f"lesson@example.com,X,UTC,12,{CONSENT},\n"             # 7
    f"zero@example.com,X,UTC,0,{CONSENT},\n"                # 8
    f"GOOD1@example.com,Again,UTC,1,{CONSENT},\n"           # 9
    "noconsent@example.com,X,UTC,1,,\n"                     # 10
    f"future@example.com,X,UTC,1,2999-01-01T00:00:00Z,\n"   # 11
    f"status@example.com,X,UTC,1,{CONSENT},asleep\n"        # 12
    f"long@example.com,{'n' * 101},UTC,1,{CONSENT},\n"      # 13
    f"shifted@example.com,Smith, Jo,UTC,1,{CONSENT},active\n"  # 14
    "\n"                                                     # 15: blank, skipped
    f"good2@example.com,=cmd|' /C calc'!A0,UTC,11,{CONSENT},finished\n"  # 16
)


def test_each_bad_row_is_reported_with_its_physical_line_and_the_good_ones_land(app, tmp_path):
    path = write(tmp_path, BAD)
    result = run(app, path)
    assert result.exit_code == 1
    assert problems(result) == [
        f"{path}:5: 'not-an-address' is not a valid email address",
        f"{path}:6: time zone 'Mars/Olympus' is not an IANA name such as Europe/Paris",
        f"{path}:7: next_lesson 12 is not in the course (1 to 10, "
        "or 11 for someone who has had every lesson)",
        f"{path}:8: next_lesson 0 is not in the course (1 to 10, "
        "or 11 for someone who has had every lesson)",
        f"{path}:9: good1@example.com is already on line 2 of this file",
        f"{path}:10: no consent_at (when they agreed to get the course); "
        "add the column, or run with --consent-note",
        f"{path}:11: consent_at '2999-01-01T00:00:00Z' is in the future",
        f"{path}:12: status 'asleep' is not one of pending, active, paused, finished, "
        "unsubscribed, bounced, complained",
        f"{path}:13: the name is longer than 100 characters",
        f"{path}:14: 7 values but the header has 6 columns "
        "(a comma in a value that is not in quotes?)",
    ]
    assert result.stdout == f"{path}: imported 3, already there 0, rejected 10\n"
    with app.app_context():
        subs = subscribers()
        assert set(subs) == {"good1@example.com", "multi@example.com", "good2@example.com"}
        assert subs["good1@example.com"].name == "One"  # the duplicate changed nothing
        assert subs["multi@example.com"].name == "Two lines, quoted"
        finished = subs["good2@example.com"]
        assert (finished.status, finished.next_position, finished.next_send_at) == (
            Status.FINISHED, 11, None)
        assert finished.name == "=cmd|' /C calc'!A0"  # stored as text; the export quotes it


def test_a_repeat_in_a_later_batch_is_still_a_repeat_not_already_there(app, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(cli_subscribers, "BATCH", 2)
    lines = ["email,consent_at"] + [f"p{i}@example.com,{CONSENT}" for i in range(5)]
    lines.append(f"P1@example.com,{CONSENT}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    result = run(app, path)
    assert result.exit_code == 1
    assert problems(result) == [f"{path}:7: p1@example.com is already on an earlier line of "
                                "this file"]
    assert result.stdout == f"{path}: imported 5, already there 0, rejected 1\n"


# --- whole-file problems: one line, nothing imported -------------------------------------


@pytest.mark.parametrize("content, message", [
    (b"name,timezone\nAnn,UTC\n",
     "{path}:1: the header row has no email column (it has: name, timezone)"),
    (b"", "{path}: the file is empty; it needs a header row with an email column"),
    (b"Email,name,EMAIL\na@example.com,A,b@example.com\n",
     "{path}:1: the header has two email columns (fields 1 and 3)"),
    (b"email,name\nann@example.com,Ann\nbob@example.com,Jos\xe9\n",
     '{path}:3: this is not UTF-8 text; save the file as "CSV UTF-8" and try again'),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
     '{path}:1: this is not UTF-8 text; save the file as "CSV UTF-8" and try again'),
    (b'email,name\nann@example.com,"never closed\n',
     "{path}:2: this is not a CSV file that can be read (unexpected end of data)"),
])
def test_a_file_that_is_not_utf8_csv_with_an_email_column_gets_one_line_and_no_import(
        app, tmp_path, content, message):
    path = tmp_path / "list.csv"
    path.write_bytes(content)
    result = run(app, path)
    assert result.exit_code == 1
    assert result.output.strip() == "Error: " + message.format(path=path)
    with app.app_context():
        assert subscribers() == {}


# --- running it again --------------------------------------------------------------------


def test_running_the_same_file_again_imports_nothing_and_changes_nothing(app, tmp_path):
    path = write(tmp_path, BAD)
    first_run = run(app, path)
    with app.app_context():
        first = {e: (s.id, s.name, s.status, s.next_send_at, s.updated_at)
                 for e, s in subscribers().items()}
    again = run(app, path)
    assert again.exit_code == 1  # the same bad rows are still bad, the repeat included
    assert problems(again) == problems(first_run)
    assert again.stdout == f"{path}: imported 0, already there 3, rejected 10\n"
    with app.app_context():
        assert {e: (s.id, s.name, s.status, s.next_send_at, s.updated_at)
                for e, s in subscribers().items()} == first


def test_an_existing_subscriber_is_matched_like_signup_does_and_left_alone(app, tmp_path):
    with app.app_context():
        db.session.add(Subscriber(email="ann@example.com", name="Ann", timezone="UTC",
                                  status=Status.UNSUBSCRIBED))
        db.session.commit()
    path = write(tmp_path, f"email,name,status,consent_at\n ANN@Example.com ,New,active,"
                           f"{CONSENT}\n")
    result = run(app, path)
    assert result.exit_code == 0
    assert result.stdout == f"{path}: imported 0, already there 1, rejected 0\n"
    with app.app_context():
        ann = subscribers()["ann@example.com"]
        assert (ann.name, ann.status, ann.next_send_at) == ("Ann", Status.UNSUBSCRIBED, None)


# --- options and output ------------------------------------------------------------------


def test_progress_goes_to_stderr_and_the_summary_to_stdout(app, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_subscribers, "BATCH", 10)
    rows = "".join(f"p{i}@example.com,{CONSENT}\n" for i in range(35))
    path = write(tmp_path, "email,consent_at\n" + rows + "bad,\n")
    result = run(app, path)
    assert result.stderr.splitlines()[0] == f"Importing {path}"
    assert f"{path}:37: 'bad' is not a valid email address" in result.stderr
    assert result.stdout == f"{path}: imported 35, already there 0, rejected 1\n"
    assert "Importing" not in result.stdout


def test_a_consent_note_stands_in_for_missing_consent_times(app, tmp_path):
    path = write(tmp_path, "email\nann@example.com\n")
    before = utcnow()
    result = run(app, path, "--consent-note", "old list, opt-in 2023")
    assert result.exit_code == 0, result.output
    with app.app_context():
        ann = subscribers()["ann@example.com"]
        assert ann.consent_version == "old list, opt-in 2023"
        assert before <= ann.consent_at <= utcnow()
    too_long = run(app, path, "--consent-note", "x" * 33)
    assert too_long.exit_code == 2
    assert "--consent-note" in too_long.output and "32 characters" in too_long.output


def test_confirm_imports_people_as_pending_and_asks_each_to_confirm(app, tmp_path, outbox):
    path = write(tmp_path, f"email,name,consent_at,status\n"
                           f"ann@example.com,Ann,{CONSENT},\n"
                           f"bob@example.com,Bob,{CONSENT},unsubscribed\n")
    result = run(app, path, "--confirm")
    assert result.exit_code == 0, result.output
    with app.app_context():
        subs = subscribers()
        assert subs["ann@example.com"].status == Status.PENDING
        assert subs["ann@example.com"].next_send_at is None
        assert subs["bob@example.com"].status == Status.UNSUBSCRIBED
    run_jobs(app)
    assert [m["To"] for m in outbox] == ["ann@example.com"]  # confirmations carry no name
    assert "confirm" in outbox[0]["Subject"].lower()


def test_confirm_with_redis_down_stops_before_importing_anything(make_app, tmp_path):
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    path = write(tmp_path, f"email,consent_at\nann@example.com,{CONSENT}\n")
    result = run(app, path, "--confirm")
    assert result.exit_code == 1
    assert "Redis does not answer" in result.output and "nothing was imported" in result.output
    with app.app_context():
        assert subscribers() == {}


def test_an_address_that_signs_up_during_the_import_is_skipped_and_the_rest_land(
        app, tmp_path, monkeypatch):
    """The batch insert fails on the unique address; the batch is redone row by row."""
    insert = cli_subscribers._insert
    calls: list[int] = []

    def signup_first(rows, options):
        if not calls:  # someone signs up with p1 between the check and the insert
            with db.engine.begin() as conn:
                conn.execute(db.insert(Subscriber).values(
                    email="p1@example.com", name="Web", timezone="UTC",
                    status=Status.PENDING, next_position=1, created_at=utcnow(),
                    updated_at=utcnow()))
        calls.append(len(rows))
        return insert(rows, options)

    monkeypatch.setattr(cli_subscribers, "_insert", signup_first)
    rows = "".join(f"p{i}@example.com,Imported,{CONSENT}\n" for i in range(3))
    path = write(tmp_path, "email,name,consent_at\n" + rows)
    result = run(app, path)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{path}: imported 2, already there 1, rejected 0\n"
    assert calls == [3, 1, 1, 1]
    with app.app_context():
        subs = subscribers()
        assert set(subs) == {"p0@example.com", "p1@example.com", "p2@example.com"}
        assert (subs["p1@example.com"].name, subs["p1@example.com"].status) == (
            "Web", Status.PENDING)


def test_lesson_numbers_that_are_not_plain_numbers_are_rejected(app, tmp_path):
    path = write(tmp_path, "email,lesson,consent_at\n" + "".join(
        f"p{i}@example.com,{value},{CONSENT}\n"
        for i, value in enumerate(["²", "two", "-1", "1.5", "'+3"])))
    result = run(app, path)
    assert problems(result) == [
        f"{path}:2: next_lesson '²' is not a lesson number",
        f"{path}:3: next_lesson 'two' is not a lesson number",
        f"{path}:4: next_lesson '-1' is not a lesson number",
        f"{path}:5: next_lesson '1.5' is not a lesson number",
        f"{path}:6: next_lesson '+3' is not a lesson number",
    ]
