"""How long a lesson takes: reading time worked out from its words, exercise time from its
front matter.

The landing page, each lesson email and ``flask lessons check`` show these figures, so the
course never promises a length its lessons don't have: a figure typed into the course
description drifts as soon as a lesson is edited, a computed one cannot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# A common figure for adults reading on screen; only the rounding is shown to readers.
WORDS_PER_MINUTE = 230
EXERCISE_MAX_MINUTES = 240

MD_LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
HTML_TAG_RE = re.compile(r"<[^>]+>")
# A token counts as a word when it has a letter or digit, and is not a list number ("2.").
WORD_RE = re.compile(r"\w")
LIST_NUMBER_RE = re.compile(r"^\d+[.)]$")
HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s+(.*)$")
# "25 minutes", "15 to 20 minutes", "15-20 minutes", "a 15-minute exercise".
STATED_MINUTES_RE = re.compile(
    r"\b(\d{1,3})(?:\s*(?:to|-|–)\s*(\d{1,3}))?[\s-]+min(?:ute)?s?\b", re.IGNORECASE
)


def count_words(markdown_body: str) -> int:
    """Words a reader reads: link targets, tags and Markdown markup are not words."""
    text = MD_LINK_RE.sub(r"\1", markdown_body)
    text = HTML_TAG_RE.sub(" ", text)
    return sum(1 for token in text.split()
               if WORD_RE.search(token) and not LIST_NUMBER_RE.match(token))


def reading_minutes(words: int) -> int:
    """Minutes to read ``words``, rounded to the nearest minute and never less than one."""
    return max(1, int(words / WORDS_PER_MINUTE + 0.5))


def stated_exercise_minutes(body: str) -> list[tuple[int, int, int]]:
    """Every time the lesson's exercise section names, as (line offset, low, high).

    The exercise section is whatever follows a heading with "exercise" in it, up to the
    next heading. The loader holds these to the front matter's ``exercise_minutes``.
    """
    found: list[tuple[int, int, int]] = []
    in_exercise = False
    for offset, line in enumerate(body.splitlines()):
        heading = HEADING_RE.match(line)
        if heading:
            in_exercise = "exercise" in heading.group(1).lower()
            continue
        if in_exercise:
            for m in STATED_MINUTES_RE.finditer(line):
                low = int(m.group(1))
                high = int(m.group(2)) if m.group(2) else low
                found.append((offset, min(low, high), max(low, high)))
    return found


def span_text(low: int, high: int) -> str:
    """``2`` or ``15–25``: a figure, or a range when the lessons differ."""
    return str(low) if low == high else f"{low}–{high}"


@dataclass(frozen=True)
class CourseTiming:
    """The spread of reading and exercise times across a course's lessons."""

    reading: tuple[int, int]
    exercise: tuple[int, int] | None

    @classmethod
    def of(cls, reading: Iterable[int], exercise: Iterable[int | None]) -> CourseTiming:
        minutes = list(reading) or [0]
        exercises = [m for m in exercise if m]
        return cls((min(minutes), max(minutes)),
                   (min(exercises), max(exercises)) if exercises else None)

    @property
    def reading_text(self) -> str:
        return span_text(*self.reading)

    @property
    def exercise_text(self) -> str:
        return span_text(*self.exercise) if self.exercise else ""


def check_exercise_minutes(data: dict[str, Any], body: str, display: str,
                           lines: dict[str, int], body_line: int,
                           problems: list[str]) -> int | None:
    """``exercise_minutes`` is optional, but when the exercise names a time, the two agree.

    The landing page adds these figures up, so a lesson saying "Give yourself 25 minutes"
    under a front matter of 15 would make it promise the wrong length.
    """
    value = data.get("exercise_minutes")
    stated = stated_exercise_minutes(body)
    if value is None:
        if stated:
            offset, low, high = stated[0]
            problems.append(f"{display}:{body_line + offset}: the exercise says "
                            f"{span_text(low, high)} minutes: add exercise_minutes to the "
                            "front matter so the course page can count it")
        return None
    if (not isinstance(value, int) or isinstance(value, bool)
            or not 1 <= value <= EXERCISE_MAX_MINUTES):
        problems.append(f"{display}:{lines['exercise_minutes']}: exercise_minutes must be a "
                        f"whole number of minutes, 1 to {EXERCISE_MAX_MINUTES}")
        return None
    for offset, low, high in stated:
        if not low <= value <= high:
            problems.append(f"{display}:{body_line + offset}: the exercise says "
                            f"{span_text(low, high)} minutes but exercise_minutes is {value}")
    return value
