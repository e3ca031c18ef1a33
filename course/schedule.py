"""When the next lesson is due: pure functions of UTC instants and an IANA time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

_ZONES: frozenset[str] | None = None


def valid_timezone(name: str | None) -> bool:
    """True for a real IANA zone name such as 'Europe/Paris'."""
    global _ZONES
    if not name or len(name) > 64:
        return False
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    if name not in _ZONES:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def local_instant(day: date, hour: int, tz: ZoneInfo) -> datetime:
    """``hour``:00 on ``day`` in ``tz`` as UTC; a time skipped by DST moves forward an hour."""
    naive = datetime.combine(day, time(hour))
    aware = naive.replace(tzinfo=tz)
    # Round-trip through UTC: a non-existent wall time (spring-forward gap) comes back shifted.
    roundtrip = aware.astimezone(UTC).astimezone(tz)
    if roundtrip.replace(tzinfo=None) != naive:
        aware = (naive + timedelta(hours=1)).replace(tzinfo=tz)
    return aware.astimezone(UTC)


def next_send_time(
    last_sent: datetime,
    timezone: str,
    *,
    cadence_days: int,
    send_hour: int,
    skip_weekends: bool,
) -> datetime:
    """The UTC instant the lesson after one sent at ``last_sent`` is due.

    ``cadence_days`` local calendar days after the day the last lesson went out, at
    ``send_hour`` local time; Saturdays and Sundays roll to Monday when skipped.
    """
    tz = ZoneInfo(timezone)
    day = last_sent.astimezone(tz).date() + timedelta(days=cadence_days)
    if skip_weekends:
        while day.weekday() >= 5:
            day += timedelta(days=1)
    return local_instant(day, send_hour, tz)
