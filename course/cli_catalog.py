"""``flask course list`` and ``flask course new``: the catalog from the command line.

Both read the files only, never the app, so they work when the app refuses to start
(a broken course, or a second course and no ``COURSE`` setting yet).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .catalog import load_catalog
from .config import ROOT
from .lessons import SLUG_RE, Course, CourseError
from .schedule import EVERY_DAY, WEEKDAYS

DIR_HELP = "lessons folder holding the course folders (default: $LESSONS_DIR or ./lessons)"


def lessons_root(directory: Path | None) -> Path:
    return directory or Path(os.environ.get("LESSONS_DIR") or ROOT / "lessons")


def days_text(course: Course) -> str:
    """``every day``, ``mon-fri`` or ``mon, wed, fri``, plus the skipped dates if any."""
    days = course.send_days
    text = ("every day" if days == EVERY_DAY
            else "mon-fri" if days == frozenset(range(5))
            else ", ".join(WEEKDAYS[d] for d in sorted(days)))
    skipped = len(course.skip_dates) + len(course.skip_yearly)
    return text + (f", {skipped} date(s) skipped" if skipped else "")


def list_courses(directory: Path | None) -> None:
    """Every course: slug, title, lessons, cadence and send days; ``*`` marks the one the
    app runs (``COURSE``, or the only course)."""
    root = lessons_root(directory)
    try:
        catalog = load_catalog(root)
    except CourseError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        click.echo(f"{len(exc.problems)} problem(s) in {root}; "
                   "`flask lessons check` says the same", err=True)
        sys.exit(1)
    selected = (os.environ.get("COURSE") or "").strip()
    if not selected and len(catalog.courses) == 1:
        selected = next(iter(catalog.courses))
    for slug, course in catalog.courses.items():
        mark = "*" if slug == selected else " "
        click.echo(f"{mark} {slug}  {course.title!r}  {course.length} lessons  every "
                   f"{course.cadence_days} day(s) at {course.send_hour:02d}:00 local  "
                   f"{days_text(course)}")
    if selected not in catalog.courses:
        click.echo(f"{len(catalog.courses)} courses: set COURSE to the one the app runs "
                   "(running several at once comes with enrollments)", err=True)


COURSE_TEMPLATE = """\
# The course file. Every key is explained above it; `flask lessons check`
# validates this file and the lessons next to it (*.md), with file:line problems.
title: {title}
# One or two sentences under the title on the course page.
tagline: Replace this with what a reader gets from the course, in one sentence.
# The course page's description (Markdown).
description: |
  Say who the course is for and what changes for them by the end.
# Bullet points on the course page; optional.
outcomes:
  - Replace this with one thing a reader can do after the course
# The From name readers see in their inbox.
sender_name: {title}
# Optional: where replies go; otherwise MAIL_REPLY_TO.
# reply_to: you@example.com
author:
  name: Your Name
  bio: One line about you, shown on the course page and in every email's footer.
# Required when MINICOURSE_ENV=production (CAN-SPAM): your postal address.
# postal_address: |
#   Your Name
#   1 Example Street
# Days between lessons (a lesson's own delay_days overrides it), and the local hour they
# go out in each reader's time zone.
cadence_days: 1
send_hour: 9
# Weekdays lessons go out on (mon..sun); a lesson due on another day waits for the next.
send_days: [mon, tue, wed, thu, fri]
# Dates nothing goes out: "YYYY-MM-DD" once, "MM-DD" every year.
skip_dates: ["12-25", "01-01"]
# The time zone used when a reader's browser does not say one.
default_timezone: UTC
# true: each lesson waits until the previous one is marked done (or max_wait_days pass).
progress_gated: false
# Optional: the slug of the course that follows this one, and how (offer or auto). Only
# checked for now; joining the next course comes with enrollments.
# next_course: another-course
# next_course_mode: offer
confirmation_subject: {confirm}
confirmation_intro: |
  You're one click away from your first lesson. Confirm your address below.
welcome: |
  **You're in!** Lesson 1 is on its way to your inbox.
completion: |
  **You've finished the course.** Thank you for taking it.
"""

LESSON_TEMPLATES = {
    "01-welcome.md": """\
---
# Front matter: the lesson's identity and its email. `slug` names the lesson for good
# (keep it when you edit the text); `position` is its place in the course (1, 2, ...).
slug: welcome
position: 1
# The title on the page, the email's subject line and the preview text inboxes show.
title: Welcome
subject: "Day 1: Welcome"
preheader: What this course is and how to get the most from it.
# Optional: minutes the exercise takes; must match any time the exercise states.
exercise_minutes: 5
---
Write the first lesson here, in Markdown. It goes out as soon as the reader confirms.

## Today's exercise

Take 5 minutes to write down why you signed up.
""",
    "02-first-step.md": """\
---
slug: first-step
position: 2
title: The first step
subject: "Day 2: The first step"
preheader: One small thing to do today.
# Optional: days after the previous lesson, instead of the course's cadence_days.
delay_days: 2
---
Write the second lesson here. Links must be full addresses, such as
[an example](https://example.com/).
""",
}


def new_course(slug: str, directory: Path | None, title: str | None) -> None:
    """Create ``lessons/SLUG/`` with a course file and two sample lessons that pass
    ``flask lessons check`` as they are."""
    root = lessons_root(directory)
    if not SLUG_RE.match(slug) or len(slug) > 64:
        raise click.BadParameter(f"{slug!r} is not a course slug: use lowercase letters, "
                                 "digits and hyphens, such as my-course", param_hint="SLUG")
    target = root / slug
    if target.exists():
        raise click.UsageError(f"{target} already exists: choose another slug")
    name = (title or slug.replace("-", " ").capitalize()).strip()
    if not name or "\n" in name:
        raise click.BadParameter("the title must be one line of text", param_hint="--title")
    target.mkdir(parents=True)
    # JSON strings are YAML strings: any title is written safely quoted.
    text = COURSE_TEMPLATE.format(title=json.dumps(name),
                                  confirm=json.dumps(f"Please confirm your spot in {name}"))
    (target / "course.yml").write_text(text, encoding="utf-8")
    for filename, text in LESSON_TEMPLATES.items():
        (target / filename).write_text(text, encoding="utf-8")
    click.echo(f"created {target}/course.yml and {len(LESSON_TEMPLATES)} sample lessons; "
               "edit them, then run `flask lessons check`")
    others = [p.name for p in root.iterdir() if p.is_dir() and p.name != slug
              and not p.name.startswith((".", "_"))]
    if others and not os.environ.get("COURSE"):
        click.echo(f"{root} now holds {len(others) + 1} courses: set COURSE to the one the "
                   "app runs (running several at once comes with enrollments)")
