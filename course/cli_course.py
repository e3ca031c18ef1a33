"""``flask lessons check``, ``flask course list``, ``new`` and ``rehearse``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import click
from flask import current_app
from flask.cli import with_appcontext

from .catalog import load_catalog
from .cli_catalog import DIR_HELP, days_text, lessons_root, list_courses, new_course
from .lessons import Course, CourseError
from .lessons_timing import WORDS_PER_MINUTE
from .mail import MailError

if TYPE_CHECKING:
    from .models import Subscriber


@click.group("lessons")
def lessons_cli() -> None:
    """Work with the course files in lessons/<course>/."""


@lessons_cli.command("check")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help=DIR_HELP)
@click.option("--course", "only", default=None, metavar="SLUG",
              help="check this course only (default: every course)")
@click.option("--production/--development", default=None,
              help="check as a public site would (default: from MINICOURSE_ENV)")
def lessons_check(directory: Path | None, only: str | None, production: bool | None) -> None:
    """Validate every course (or ``--course SLUG``); print file:line: problem for each fault.

    Works even when the app itself refuses to start because of the course. A valid course
    is then rendered with the app's settings, and a lesson whose per-recipient data would
    not fit in one SendGrid personalization fails too (``course.lesson_fit``).
    """
    folder = lessons_root(directory)
    if production is None:
        production = os.environ.get("MINICOURSE_ENV", "").strip().lower() == "production"
    try:
        catalog = load_catalog(folder, production=production, only=only)
    except CourseError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        click.echo(f"{len(exc.problems)} problem(s) in {folder}", err=True)
        sys.exit(1)
    # The app is loaded only for its settings (links, sender), on the catalog just checked;
    # any of its courses will do for that, so several and no COURSE do not stop it.
    os.environ["LESSONS_DIR"] = str(folder)
    if os.environ.get("COURSE") not in catalog.courses:
        os.environ["COURSE"] = next(iter(catalog.courses))
    too_big = [p for course in catalog.courses.values() for p in personalization_problems(course)]
    if too_big:
        for problem in too_big:
            click.echo(problem, err=True)
        click.echo(f"{len(too_big)} problem(s) in {folder}", err=True)
        sys.exit(1)
    for slug, course in catalog.courses.items():
        click.echo(f"ok: {slug}: {course.title!r}, {course.length} lessons, every "
                   f"{course.cadence_days} day(s) at {course.send_hour:02d}:00 local time, "
                   f"{days_text(course)}")
        for lesson in course.lessons:
            delay = f" (after {lesson.delay_days} days)" if lesson.delay_days else ""
            click.echo(f"  {lesson.position:>2}. {lesson.slug}: {lesson.subject}{delay}")
        echo_timing(course)


def echo_timing(course: Course) -> None:
    """Each lesson's reading time (its words at ``WORDS_PER_MINUTE``) and exercise time
    (its front matter): the figures the landing page and the emails show."""
    click.echo(f"Reading time at {WORDS_PER_MINUTE} words a minute, exercise time from "
               "exercise_minutes:")
    for lesson in course.lessons:
        exercise = (f"{lesson.exercise_minutes} min exercise" if lesson.exercise_minutes
                    else "no exercise_minutes")
        click.echo(f"  {lesson.position:>2}. {lesson.words:>4} words, "
                   f"{lesson.reading_minutes} min read, {exercise}")
    timing = course.timing
    click.echo(f"The course page says: about {timing.reading_text} min to read each"
               + (f", exercises of {timing.exercise_text} min" if timing.exercise else ""))


def personalization_problems(course: Course) -> list[str]:
    """``course.lesson_fit``'s problems, rendered in the app this command belongs to."""
    from flask.cli import ScriptInfo

    from .lesson_fit import course_problems

    try:
        app = click.get_current_context().ensure_object(ScriptInfo).load_app()
    except Exception as exc:  # noqa: BLE001 - whatever stops the app, say it in one line
        return [f"cannot measure each recipient's data: the app does not start ({exc})"]
    except SystemExit:  # wsgi.py has printed why (another course may be broken)
        return ["cannot measure each recipient's data: the app does not start (see above)"]
    with app.app_context():
        return course_problems(course)


@click.group("course")
def course_cli() -> None:
    """Run the course."""


@course_cli.command("list")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help=DIR_HELP)
def course_list(directory: Path | None) -> None:
    """List every course: slug, title, lessons, cadence and send days."""
    list_courses(directory)


@course_cli.command("new")
@click.argument("slug")
@click.option("--title", default=None, help="the course title (default: from the slug)")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help=DIR_HELP)
def course_new(slug: str, title: str | None, directory: Path | None) -> None:
    """Create lessons/SLUG/ with a course file and two sample lessons, explained inside."""
    new_course(slug, directory, title)


@course_cli.command("rehearse")
@click.argument("email")
@click.option("--days", default=14, show_default=True, type=click.IntRange(1, 3650),
              help="how many days to play forward")
@click.option("--timezone", "tz", default=None, help="the rehearsal subscriber's time zone")
@click.option("--name", default="Rehearsal", show_default=True)
@click.option("--base-url", default=None,
              help="where links in the emails point (default: the running `flask dev`'s "
                   "address, else BASE_URL)")
@with_appcontext
def rehearse(email: str, days: int, tz: str | None, name: str, base_url: str | None) -> None:
    """Play the course forward in accelerated time for one test address.

    Drives the real scheduler tick and sending code with a simulated clock, limited to
    this one subscriber, so every lesson lands through the configured mail backend (the
    outbox by default) in seconds. The address is a test subscriber: no figure counts it,
    no other subscriber is touched (the tick's global steps do not run on this clock), no
    outgoing webhook is sent, and nothing more goes to it once the rehearsal is over. Its
    earlier rehearsal history is replaced.
    """
    from .content import current_course
    from .dbcheck import schema_problem
    from .extensions import db
    from .models import Subscriber
    from .schedule import valid_timezone
    from .signup import normalise_email

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
    links = rehearsal_base_url(base_url)
    sub = db.session.scalar(db.select(Subscriber).where(Subscriber.email == address))
    if sub is not None and not sub.is_test:
        raise click.UsageError(
            f"{address} is a real subscriber; rehearse with an address of your own "
            "(for example you+rehearsal@example.com)"
        )
    # Only while this command runs: the emails' links, and no webhook to integrators.
    with overridden(BASE_URL=links, WEBHOOK_URLS=[]):
        failed = play(course, sub, address=address, zone=zone, name=name, days=days)
    if failed:
        sys.exit(1)


def play(course: Course, sub: Subscriber | None, *, address: str, zone: str, name: str,
         days: int) -> int:
    """Replace the test subscriber and play its course forward; how many lessons failed."""
    from . import pipeline
    from .extensions import db
    from .models import Status, Subscriber
    from .timeutil import utcnow

    start = utcnow()
    if sub is not None:
        db.session.delete(sub)
        db.session.flush()
    sub = Subscriber(email=address, name=name, timezone=zone, status=Status.ACTIVE,
                     consent_at=start, consent_version="rehearsal", confirmed_at=start,
                     is_test=True, next_position=1, next_send_at=start)
    db.session.add(sub)
    db.session.commit()
    backend = current_app.config["MAIL_BACKEND"]
    where = current_app.config["OUTBOX_DIR"] if backend == "outbox" else backend
    click.echo(f"Rehearsing {course.title!r} for {address} ({zone}) over {days} days; "
               f"mail goes to {where}; links point at {current_app.config['BASE_URL']}")
    end = start + timedelta(days=days)
    logging.getLogger("course.pipeline").setLevel(logging.WARNING)  # the lines below say it
    logging.getLogger("course.sending").setLevel(logging.ERROR)
    sent, failed, shown = 0, 0, set()
    while sub.next_send_at is not None and sub.next_send_at <= end:
        clock = sub.next_send_at
        error = ""

        def send_now(ids: list[int], clock=clock) -> None:  # type: ignore[no-untyped-def]
            pipeline.send_deliveries(ids, now=clock)

        try:
            pipeline.tick(clock, enqueue=send_now, subscriber_ids=[sub.id])
        except MailError as exc:  # not sent, and the job would be retried later
            db.session.rollback()
            error = str(exc)
        db.session.refresh(sub)
        for d in sub.deliveries:
            if d.id in shown:
                continue
            shown.add(d.id)
            ok = d.sent_at is not None
            sent, failed = sent + ok, failed + (not ok)
            at = (d.sent_at or clock).astimezone(ZoneInfo(zone))
            day = (at.date() - start.astimezone(ZoneInfo(zone)).date()).days + 1
            lesson = course.lesson_at(d.position)
            outcome = d.status if ok else f"{d.status}: {d.error or error or 'not sent'}"
            click.echo(f"  day {day:>3}  {at:%a %Y-%m-%d %H:%M %Z}  lesson {d.position}: "
                       f"{lesson.subject if lesson else d.lesson_slug}  [{outcome}]")
        if error or sub.next_send_at == clock or failed:
            break  # nothing more moves: the lines above say why
    click.echo(f"{sent} lesson(s) sent"
               + (f", {failed} failed (listed above)" if failed else "")
               + f"; subscriber is now {sub.status}"
               + (f", next lesson due {sub.next_send_at:%Y-%m-%d %H:%M} UTC on the "
                  "rehearsal's clock; nothing more goes to this address"
                  if sub.next_send_at else ""))
    if sub.next_send_at is not None:
        # The real tick must never send the rest to a test address.
        sub.next_send_at = None
        db.session.commit()
    return failed


@contextmanager
def overridden(**values: Any) -> Iterator[None]:
    """Settings changed for the duration of a command (the app object may outlive it)."""
    saved = {key: current_app.config.get(key) for key in values}
    current_app.config.update(values)
    try:
        yield
    finally:
        current_app.config.update(saved)


def rehearsal_base_url(option: str | None) -> str:
    """Where the rehearsal's links point: ``--base-url``, else the address the running
    ``flask dev`` gives its processes (its port, not the default :5000), else BASE_URL."""
    from .devserver import running_base_url

    url = option or running_base_url(Path(current_app.instance_path))
    url = (url or current_app.config["BASE_URL"]).rstrip("/")
    try:
        parts = urlsplit(url)
        fine = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        fine = False
    if not fine:
        raise click.BadParameter(f"{url!r} is not an http(s) address", param_hint="--base-url")
    return url
