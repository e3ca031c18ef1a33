"""Loading and validating the course from ``lessons/``: plain functions on plain files.

Every problem is reported as ``file:line: problem`` so an author can jump to it; the
same checks run in ``flask lessons check`` and when the app starts.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import markdown
import yaml

from .course_settings import parse_delay_days, parse_links, parse_send_days, parse_skip_dates
from .lessons_identity import Author, check_sender_name, parse_identity
from .lessons_timing import CourseTiming, check_exercise_minutes, count_words, reading_minutes
from .schedule import EVERY_DAY, SendRules

COURSE_FILE = "course.yml"
LESSON_FIELDS = ("slug", "position", "title", "subject", "preheader")
COURSE_FIELDS = (
    "title",
    "tagline",
    "description",
    "sender_name",
    "cadence_days",
    "send_hour",
    "confirmation_subject",
    "confirmation_intro",
    "welcome",
    "completion",
)
SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# Inline links and images, autolinks, and reference definitions.
LINK_RE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<(https?://[^>]+)>")
REF_DEF_RE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
MARKDOWN_EXTENSIONS = ["extra", "sane_lists", "smarty"]


@dataclass(frozen=True)
class Lesson:
    slug: str
    position: int
    title: str
    subject: str
    preheader: str
    body: str
    path: str
    content_hash: str
    # Minutes the exercise takes, from the front matter; None when the author gave none.
    exercise_minutes: int | None = None
    words: int = 0
    # Days after the previous lesson, instead of the course's cadence; None: the cadence.
    delay_days: int | None = None

    @property
    def reading_minutes(self) -> int:
        return reading_minutes(self.words)


@dataclass(frozen=True)
class Course:
    title: str
    tagline: str
    description: str
    outcomes: tuple[str, ...]
    sender_name: str
    cadence_days: int
    send_hour: int
    skip_weekends: bool
    default_timezone: str
    confirmation_subject: str
    confirmation_intro: str
    welcome: str
    completion: str
    author: Author
    # CAN-SPAM's postal address, shown in every email (required in production).
    postal_address: str = ""
    # The owner's own privacy policy; "" means the built-in page at /privacy.
    privacy_url: str = ""
    lessons: tuple[Lesson, ...] = field(default=())
    # Progress-gated: the next lesson waits until the previous one is marked done, or
    # until ``max_wait_days`` have passed since it was sent.
    progress_gated: bool = False
    max_wait_days: int = 7
    # The folder name in the catalog; "" for a course loaded on its own.
    slug: str = ""
    reply_to: str = ""  # "" means the global MAIL_REPLY_TO
    send_days: frozenset[int] = EVERY_DAY  # weekday numbers, Monday 0
    skip_dates: frozenset[date] = frozenset()
    skip_yearly: frozenset[tuple[int, int]] = frozenset()
    # Checked against the catalog; what an enrollment does with them comes later.
    next_course: str = ""
    next_course_mode: str = "offer"

    @property
    def rules(self) -> SendRules:
        return SendRules(self.cadence_days, self.send_hour, self.send_days, self.skip_dates,
                         self.skip_yearly)

    def days_before(self, position: int) -> int:
        """Days lesson ``position`` waits after the one before it."""
        lesson = self.lesson_at(position)
        return lesson.delay_days if lesson and lesson.delay_days else self.cadence_days

    def lesson_at(self, position: int) -> Lesson | None:
        for lesson in self.lessons:
            if lesson.position == position:
                return lesson
        return None

    def lesson_by_slug(self, slug: str) -> Lesson | None:
        for lesson in self.lessons:
            if lesson.slug == slug:
                return lesson
        return None

    @property
    def length(self) -> int:
        return len(self.lessons)

    @property
    def timing(self) -> CourseTiming:
        """Reading and exercise minutes across the lessons, for the landing page."""
        return CourseTiming.of((lesson.reading_minutes for lesson in self.lessons),
                               (lesson.exercise_minutes for lesson in self.lessons))


class CourseError(Exception):
    """The course on disk is invalid; ``problems`` are ``file:line: problem`` lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid course:\n" + "\n".join(problems))


def render_markdown(text: str) -> str:
    return markdown.markdown(text, extensions=MARKDOWN_EXTENSIONS, output_format="html")


def _split_front_matter(text: str) -> tuple[str, str, int] | None:
    """Return (front matter, body, line number where the body starts) or None."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "".join(lines[1:i]), "".join(lines[i + 1 :]), i + 2
    return None


def _key_lines(front: str, first_line: int) -> dict[str, int]:
    """The line of each top-level key. A key written so we cannot place it (flow style
    ``{slug: x}``, a quoted key) is reported at the block's first line, never a crash."""
    found: defaultdict[str, int] = defaultdict(lambda: first_line)
    for offset, line in enumerate(front.splitlines()):
        m = re.match(r"^([A-Za-z_][\w-]*)\s*:", line)
        if m:
            found.setdefault(m.group(1), first_line + offset)
    return found


class _TextDates(yaml.SafeLoader):
    """Dates stay text, so the checks (not PyYAML) judge them: 2026-02-30 gets a line."""


_TextDates.add_constructor("tag:yaml.org,2002:timestamp", _TextDates.construct_yaml_str)


def _yaml(text: str, name: str, first_line: int, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = yaml.load(text, Loader=_TextDates)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = first_line + (mark.line if mark is not None else 0)
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problems.append(f"{name}:{line}: invalid YAML: {reason}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{name}:{first_line}: expected key: value pairs")
        return None
    return data


def check_links(body: str, name: str, body_line: int, problems: list[str]) -> None:
    """Every link must be absolute http(s): relative links break inside an email."""
    for offset, line in enumerate(body.splitlines()):
        targets = [a or b for a, b in LINK_RE.findall(line)]
        m = REF_DEF_RE.match(line)
        if m:
            targets.append(m.group(1))
        for target in targets:
            parts = urlsplit(target)
            if parts.scheme == "mailto" and parts.path:
                continue
            if parts.scheme not in ("http", "https") or not parts.netloc:
                problems.append(
                    f"{name}:{body_line + offset}: link {target!r} is not absolute "
                    "(use a full https:// URL)"
                )


def _text(data: dict[str, Any], key: str, name: str, line: int, problems: list[str]) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{name}:{line}: {key!r} must be non-empty text")
        return ""
    return value.strip()


def parse_lesson(path: Path, display: str, problems: list[str]) -> Lesson | None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{display}:1: not UTF-8 text ({exc.reason})")
        return None
    split = _split_front_matter(text)
    if split is None:
        problems.append(f"{display}:1: missing front matter (a '---' block at the top)")
        return None
    front, body, body_line = split
    before = len(problems)
    data = _yaml(front, display, 2, problems)
    if data is None:
        return None
    lines = _key_lines(front, 2)
    for key in LESSON_FIELDS:
        if key not in data:
            problems.append(f"{display}:1: front matter is missing {key!r}")
    if len(problems) > before:
        return None
    slug = str(data["slug"])
    if not SLUG_RE.match(slug):
        problems.append(f"{display}:{lines['slug']}: slug {slug!r} must be lowercase-kebab-case")
    position = data["position"]
    if not isinstance(position, int) or isinstance(position, bool) or position < 1:
        problems.append(f"{display}:{lines['position']}: position must be a whole number >= 1")
        position = 0
    title = _text(data, "title", display, lines["title"], problems)
    subject = _text(data, "subject", display, lines["subject"], problems)
    preheader = _text(data, "preheader", display, lines["preheader"], problems)
    for key in ("title", "subject", "preheader"):
        value = str(data.get(key, ""))
        if "\r" in value or "\n" in value.strip():
            problems.append(f"{display}:{lines[key]}: {key} must be one line")
    if not body.strip():
        problems.append(f"{display}:{body_line}: the lesson has no body")
    exercise = check_exercise_minutes(data, body, display, lines, body_line, problems)
    delay = parse_delay_days(data, position, display, lines, problems)
    check_links(body, display, body_line, problems)
    try:
        render_markdown(body)
    except Exception as exc:  # a Markdown extension choking is a content problem
        problems.append(f"{display}:{body_line}: Markdown does not render: {exc}")
    if len(problems) > before:
        return None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Lesson(slug, position, title, subject, preheader, body.strip() + "\n", display, digest,
                  exercise_minutes=exercise, words=count_words(body), delay_days=delay)


def parse_course_file(path: Path, display: str, problems: list[str],
                      production: bool = False) -> dict[str, Any] | None:
    if not path.exists():
        problems.append(f"{display}:1: the course file is missing")
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{display}:1: not UTF-8 text ({exc.reason})")
        return None
    data = _yaml(text, display, 1, problems)
    if data is None:
        return None
    lines = _key_lines(text, 1)
    before = len(problems)
    for key in COURSE_FIELDS:
        if key not in data:
            problems.append(f"{display}:1: missing {key!r}")
    if len(problems) > before:
        return None
    out: dict[str, Any] = {}
    for key in ("title", "tagline", "description", "sender_name", "confirmation_subject",
                "confirmation_intro", "welcome", "completion"):
        out[key] = _text(data, key, display, lines.get(key, 1), problems)
    for key in ("title", "sender_name", "confirmation_subject"):
        if "\n" in out[key] or "\r" in out[key]:
            problems.append(f"{display}:{lines.get(key, 1)}: {key} must be one line")
    check_sender_name(out["sender_name"], display, lines.get("sender_name", 1), problems)
    identity = parse_identity(data, text, lines, path.parent, display, production, problems)
    cadence = data["cadence_days"]
    if not isinstance(cadence, int) or isinstance(cadence, bool) or not 1 <= cadence <= 365:
        problems.append(f"{display}:{lines['cadence_days']}: cadence_days must be 1 to 365")
    hour = data["send_hour"]
    if not isinstance(hour, int) or isinstance(hour, bool) or not 0 <= hour <= 23:
        problems.append(f"{display}:{lines['send_hour']}: send_hour must be 0 to 23")
    send_days = parse_send_days(data, display, lines, problems)
    skip_dates, skip_yearly = parse_skip_dates(data, display, lines, problems)
    links = parse_links(data, display, lines, problems)
    tz = data.get("default_timezone", "UTC")
    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a folder
        problems.append(
            f"{display}:{lines.get('default_timezone', 1)}: unknown time zone {tz!r}"
        )
    gated = data.get("progress_gated", False)
    if not isinstance(gated, bool):
        problems.append(f"{display}:{lines.get('progress_gated', 1)}: progress_gated must be "
                        "true or false")
    max_wait = data.get("max_wait_days", 7)
    if not isinstance(max_wait, int) or isinstance(max_wait, bool) or not 1 <= max_wait <= 365:
        problems.append(f"{display}:{lines.get('max_wait_days', 1)}: max_wait_days must be "
                        "1 to 365")
    outcomes = data.get("outcomes") or []
    if not isinstance(outcomes, list) or not all(isinstance(o, str) for o in outcomes):
        problems.append(f"{display}:{lines.get('outcomes', 1)}: outcomes must be a list of text")
        outcomes = []
    for key in ("description", "confirmation_intro", "welcome", "completion"):
        check_links(out[key], display, lines.get(key, 1), problems)
    if len(problems) > before:
        return None
    out.update(
        outcomes=tuple(outcomes),
        cadence_days=cadence,
        send_hour=hour,
        skip_weekends=send_days == frozenset(range(5)),
        send_days=send_days,
        skip_dates=skip_dates,
        skip_yearly=skip_yearly,
        **links,
        default_timezone=str(tz),
        progress_gated=gated,
        max_wait_days=max_wait,
        **identity,
    )
    return out


def load_course(directory: str | Path, *, production: bool = False) -> Course:
    """Load and validate the whole course, raising CourseError listing every problem.

    ``production`` adds the checks only a public site needs (a postal address).
    """
    root = Path(directory)
    problems: list[str] = []
    if not root.is_dir():
        raise CourseError([f"{root}:1: the lessons folder does not exist"])

    def display(p: Path) -> str:
        return str(p)

    meta = parse_course_file(root / COURSE_FILE, display(root / COURSE_FILE), problems,
                             production)
    lessons: list[Lesson] = []
    for path in sorted(root.glob("*.md")):
        lesson = parse_lesson(path, display(path), problems)
        if lesson is not None:
            lessons.append(lesson)
    seen_slugs: dict[str, str] = {}
    seen_positions: dict[int, str] = {}
    for lesson in lessons:
        if lesson.slug in seen_slugs:
            problems.append(
                f"{lesson.path}:1: slug {lesson.slug!r} is already used by "
                f"{seen_slugs[lesson.slug]}"
            )
        seen_slugs.setdefault(lesson.slug, lesson.path)
        if lesson.position in seen_positions:
            problems.append(
                f"{lesson.path}:1: position {lesson.position} is already used by "
                f"{seen_positions[lesson.position]}"
            )
        seen_positions.setdefault(lesson.position, lesson.path)
    if not lessons and not problems:
        problems.append(f"{root}:1: no lessons (*.md files) found")
    positions = sorted(seen_positions)
    if positions and positions != list(range(1, len(positions) + 1)) and not problems:
        problems.append(
            f"{root}:1: lesson positions must run 1..{len(positions)} without gaps, got {positions}"
        )
    if problems or meta is None:
        raise CourseError(problems)
    ordered = tuple(sorted(lessons, key=lambda item: item.position))
    return Course(lessons=ordered, **meta)
