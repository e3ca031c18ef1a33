"""``flask lessons check`` and ``flask course rehearse``."""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import click
from flask import current_app
from flask.cli import with_appcontext

from .config import ROOT
from .lessons import Course, CourseError, load_course


@click.group("lessons")
def lessons_cli() -> None:
    """Work with the course files in lessons/."""


@lessons_cli.command("check")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="lessons folder (default: $LESSONS_DIR or ./lessons)")
def lessons_check(directory: Path | None) -> None:
    """Validate the course file and every lesson; print file:line: problem for each fault.

    Works even when the app itself refuses to start because of the course. A valid course
    is then rendered with the app's settings, and a lesson whose per-recipient data would
    not fit in one SendGrid personalization fails too (``course.lesson_fit``).
    """
    folder = directory or Path(os.environ.get("LESSONS_DIR") or ROOT / "lessons")
    try:
        course = load_course(folder)
    except CourseError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        click.echo(f"{len(exc.problems)} problem(s) in {folder}", err=True)
        sys.exit(1)
    too_big = personalization_problems(course)
    if too_big:
        for problem in too_big:
            click.echo(problem, err=True)
        click.echo(f"{len(too_big)} problem(s) in {folder}", err=True)
        sys.exit(1)
    click.echo(f"ok: {course.title!r}, {course.length} lessons, every {course.cadence_days} "
               f"day(s) at {course.send_hour:02d}:00 local time")
    for lesson in course.lessons:
        click.echo(f"  {lesson.position:>2}. {lesson.slug}: {lesson.subject}")


def personalization_problems(course: Course) -> list[str]:
    """``course.lesson_fit``'s problems, rendered in the app this command belongs to."""
    from flask.cli import ScriptInfo

    from .lesson_fit import course_problems

    try:
        app = click.get_current_context().ensure_object(ScriptInfo).load_app()
    except Exception as exc:  # noqa: BLE001 - whatever stops the app, say it in one line
        return [f"cannot measure each recipient's data: the app does not start ({exc})"]
    with app.app_context():
        return course_problems(course)


@click.group("course")
def course_cli() -> None:
    """Run the course."""


@course_cli.command("rehearse")
@click.argument("email")
@click.option("--days", default=14, show_default=True, type=click.IntRange(1, 3650),
              help="how many days to play forward")
@click.option("--timezone", "tz", default=None, help="the rehearsal subscriber's time zone")
@click.option("--name", default="Rehearsal", show_default=True)
@with_appcontext
def rehearse(email: str, days: int, tz: str | None, name: str) -> None:
    """Play the course forward in accelerated time for one test address.

    Drives the real scheduler tick and sending code with a simulated clock, limited to
    this one subscriber, so every lesson lands through the configured mail backend (the
    outbox by default) in seconds. The address's earlier rehearsal history is replaced.
    """
    from . import pipeline
    from .content import current_course
    from .dbcheck import schema_problem
    from .extensions import db
    from .models import Status, Subscriber
    from .schedule import valid_timezone
    from .signup import normalise_email
    from .timeutil import utcnow

    problem = schema_problem()
    if problem:
        raise click.ClickException(problem)
    course = current_course()
    address = normalise_email(email, allow_test_domains=True)
    if address is None:
        raise click.BadParameter(f"{email!r} is not a valid email address", param_hint="EMAIL")
    zone = tz or course.default_timezone
    if not valid_timezone(zone):
        raise click.BadParameter(f"unknown time zone {zone!r}", param_hint="--timezone")
    sub = db.session.scalar(db.select(Subscriber).where(Subscriber.email == address))
    if sub is not None and sub.consent_version != "rehearsal":
        raise click.UsageError(
            f"{address} is a real subscriber; rehearse with an address of your own "
            "(for example you+rehearsal@example.com)"
        )
    start = utcnow()
    if sub is not None:
        db.session.delete(sub)
        db.session.flush()
    sub = Subscriber(email=address, name=name, timezone=zone, status=Status.ACTIVE,
                     consent_at=start, consent_version="rehearsal", confirmed_at=start,
                     next_position=1, next_send_at=start)
    db.session.add(sub)
    db.session.commit()
    backend = current_app.config["MAIL_BACKEND"]
    where = current_app.config["OUTBOX_DIR"] if backend == "outbox" else backend
    click.echo(f"Rehearsing {course.title!r} for {address} ({zone}) over {days} days; "
               f"mail goes to {where}")
    end = start + timedelta(days=days)
    logging.getLogger("course.pipeline").setLevel(logging.WARNING)  # the lines below say it
    sent = 0
    while sub.next_send_at is not None and sub.next_send_at <= end:
        clock = sub.next_send_at

        def send_now(ids: list[int], clock=clock) -> None:  # type: ignore[no-untyped-def]
            pipeline.send_deliveries(ids, now=clock)

        pipeline.tick(clock, enqueue=send_now, subscriber_ids=[sub.id])
        db.session.refresh(sub)
        for d in sub.deliveries:
            if d.sent_at == clock:
                sent += 1
                local = clock.astimezone(ZoneInfo(zone))
                day = (local.date() - start.astimezone(ZoneInfo(zone)).date()).days + 1
                click.echo(f"  day {day:>3}  {local:%a %Y-%m-%d %H:%M %Z}  "
                           f"lesson {d.position}: {course.lesson_at(d.position).subject}  "  # type: ignore[union-attr]
                           f"[{d.status}]")
        if sub.next_send_at == clock:
            break  # nothing moved: a failed send; the status above says why
    click.echo(f"{sent} lesson(s) sent; subscriber is now {sub.status}"
               + (f", next lesson due {sub.next_send_at:%Y-%m-%d %H:%M} UTC"
                  if sub.next_send_at else ""))
