"""The per-course settings that shape sending: send days, skipped dates, a lesson's own
delay, the Reply-To address and the course that follows.

Kept apart from ``lessons.py`` (which reads the rest of ``course.yml``) so each stays small;
every problem is a ``file:line: problem`` line like the rest of the loader's.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from .schedule import EVERY_DAY, WEEKDAYS

NEXT_COURSE_MODES = ("offer", "auto")
MAX_DELAY_DAYS = 365
# One address, no display name: the header is built from it as is.
REPLY_TO_RE = re.compile(r"^[^@\s<>,;\"]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$")
YEARLY_RE = re.compile(r"^(\d{2})-(\d{2})$")
SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
WEEKDAY_SET = frozenset(range(5))
FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def parse_send_days(data: dict[str, Any], display: str, lines: dict[str, int],
                    problems: list[str]) -> frozenset[int]:
    """``send_days`` (a list of mon..sun) or the older ``skip_weekends: true``; not both."""
    skip = data.get("skip_weekends", False)
    if not isinstance(skip, bool):
        problems.append(f"{display}:{lines['skip_weekends']}: skip_weekends must be true or false")
        skip = False
    if "send_days" not in data:
        return WEEKDAY_SET if skip else EVERY_DAY
    line = lines["send_days"]
    if "skip_weekends" in data:
        problems.append(f"{display}:{line}: use send_days or skip_weekends, not both "
                        "(skip_weekends: true is send_days: [mon, tue, wed, thu, fri])")
    raw = data["send_days"]
    if not isinstance(raw, list) or not raw:
        problems.append(f"{display}:{line}: send_days must be a list of weekdays, "
                        "for example [mon, tue, wed, thu, fri]")
        return EVERY_DAY
    days: set[int] = set()
    for item in raw:
        name = str(item).strip().lower()
        name = name[:3] if name in FULL_NAMES else name
        if not isinstance(item, str) or name not in WEEKDAYS:
            problems.append(f"{display}:{line}: {item!r} is not a weekday "
                            f"(use {', '.join(WEEKDAYS)})")
            continue
        days.add(WEEKDAYS.index(name))
    return frozenset(days) or EVERY_DAY


def parse_skip_dates(data: dict[str, Any], display: str, lines: dict[str, int],
                     problems: list[str]) -> tuple[frozenset[date], frozenset[tuple[int, int]]]:
    """``skip_dates``: ISO dates (2026-12-24) skipped once, "MM-DD" (12-25) every year."""
    raw = data.get("skip_dates") or []
    line = lines["skip_dates"]
    if not isinstance(raw, list):
        problems.append(f"{display}:{line}: skip_dates must be a list of dates "
                        "(2026-12-24, or \"12-25\" for every year)")
        return frozenset(), frozenset()
    once: set[date] = set()
    yearly: set[tuple[int, int]] = set()
    for item in raw:
        text = str(item).strip()
        match = YEARLY_RE.match(text)
        try:
            if match:
                month, day = int(match.group(1)), int(match.group(2))
                date(2024, month, day)  # a leap year, so 02-29 is a real yearly date
                yearly.add((month, day))
            else:
                once.add(date.fromisoformat(text))
        except ValueError:
            problems.append(f"{display}:{line}: {item!r} in skip_dates is not a date "
                            "(write 2026-12-24, or \"12-25\" for every year)")
    return frozenset(once), frozenset(yearly)


def parse_links(data: dict[str, Any], display: str, lines: dict[str, int],
                problems: list[str]) -> dict[str, str]:
    """``reply_to``, ``next_course`` and ``next_course_mode``, checked on their own; that
    ``next_course`` names a course of the catalog is ``catalog.py``'s check."""
    reply_to = data.get("reply_to") or ""
    if not isinstance(reply_to, str) or not REPLY_TO_RE.match(reply_to.strip()):
        if reply_to:
            problems.append(f"{display}:{lines['reply_to']}: reply_to must be one email "
                            "address, such as coach@example.com")
        reply_to = ""
    following = data.get("next_course") or ""
    if following and (not isinstance(following, str) or not SLUG_RE.match(following)):
        problems.append(f"{display}:{lines['next_course']}: next_course must be the slug "
                        "(folder name) of another course")
        following = ""
    mode = data.get("next_course_mode", "offer")
    if mode not in NEXT_COURSE_MODES:
        problems.append(f"{display}:{lines['next_course_mode']}: next_course_mode must be "
                        f"{' or '.join(NEXT_COURSE_MODES)}")
        mode = "offer"
    if "next_course_mode" in data and not following:
        problems.append(f"{display}:{lines['next_course_mode']}: next_course_mode without "
                        "next_course: name the course that follows")
    return {"reply_to": reply_to.strip(), "next_course": following, "next_course_mode": mode}


def parse_delay_days(data: dict[str, Any], position: int, display: str,
                     lines: dict[str, int], problems: list[str]) -> int | None:
    """A lesson's ``delay_days``: days after the previous lesson, instead of the cadence.

    The first lesson goes out when the address is confirmed, so it has no delay.
    """
    if "delay_days" not in data:
        return None
    value = data["delay_days"]
    line = lines["delay_days"]
    if (not isinstance(value, int) or isinstance(value, bool)
            or not 1 <= value <= MAX_DELAY_DAYS):
        problems.append(f"{display}:{line}: delay_days must be a whole number of days, "
                        f"1 to {MAX_DELAY_DAYS}")
        return None
    if position == 1:
        problems.append(f"{display}:{line}: the first lesson goes out on confirmation: "
                        "delay_days applies from lesson 2 on")
        return None
    return value
