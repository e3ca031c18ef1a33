"""How the admin shows times: always UTC, and the subscriber's own clock where it helps."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def utc_time(value: datetime | None) -> str:
    """``2025-03-01 09:00 UTC``, or blank when there is no time."""
    if value is None:
        return ""
    return value.strftime("%Y-%m-%d %H:%M UTC")


def local_time(value: datetime | None, timezone: str) -> str:
    """The same instant on the subscriber's clock; blank when the zone is unknown."""
    if value is None:
        return ""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return ""
    return value.astimezone(zone).strftime("%a %Y-%m-%d %H:%M %Z")


def iso_utc_time(text: str | None) -> str:
    """An ISO 8601 time stored as text (such as the pause's "since"), shown like the rest."""
    if not text:
        return ""
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return text
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return utc_time(value.astimezone(UTC))
