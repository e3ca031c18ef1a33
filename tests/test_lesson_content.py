"""What the shipped lessons teach: each its own idea, exercises that act, promises kept."""

from __future__ import annotations

import re

from course.lessons import load_course
from tests.helpers import SHIPPED_COURSE

LESSONS = SHIPPED_COURSE
COURSE = load_course(LESSONS)


def section(body: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", body, re.M | re.S)
    assert m, heading
    return m.group(1)


def test_lesson_two_has_its_own_idea_not_a_rerun_of_lesson_one():
    one, two = COURSE.lesson_at(1), COURSE.lesson_at(2)
    # Lesson 1 is about fear projected onto you; lesson 2 about a stake in the old you.
    assert re.search(r"\ba stake\b", two.body) and "trade-off" in two.body
    assert not re.search(r"\ba stake\b", one.body)
    headings = set(re.findall(r"^## (.*)$", two.body, re.M)) - {"Today's exercise"}
    assert not headings & set(re.findall(r"^## (.*)$", one.body, re.M))
    assert not two.body.startswith("Yesterday we looked at supportive people")


def test_lesson_two_exercise_has_the_reader_act_today_not_only_reflect():
    exercise = section(COURSE.lesson_at(2).body, "Today's exercise")
    steps = re.findall(r"^\d+\. (\w+)", exercise, re.M)
    assert {"Tell", "Send"} <= set(steps), steps
    assert "today" in exercise


def test_lesson_four_gives_a_complete_cold_message_with_the_why_them_line():
    body = COURSE.lesson_at(4).body
    message = "\n".join(line[1:].strip() for line in body.splitlines() if line.startswith(">"))
    assert message.startswith("**Subject:**")
    assert re.search(r"^Hi \w+,$", message, re.M)  # a greeting
    assert "I'm a retail store manager moving into" in message  # who you are
    assert "you're the only person I've found" in message  # why them
    assert "20 minutes for a call" in message  # a small, clear ask
    assert "No worries at all if now isn't a good time." in message  # an easy out
    assert message.rstrip().endswith("Priya")  # signed


def test_lesson_ten_only_claims_experience_the_reader_really_has():
    body = COURSE.lesson_at(10).body
    claim = body.index('"I manage projects.')
    assert "only if it's true" in body[claim:claim + 200]
