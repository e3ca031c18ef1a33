"""When the next lesson is due: pure functions of UTC instants and an IANA time zone."""

from __future__ import annotations

from dataclasses import dataclass
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


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERY_DAY: frozenset[int] = frozenset(range(7))
# How far ahead a free day is looked for: two years covers any yearly skip list that
# leaves at least one send day free; past that the nominal day is used, never a loop.
SEARCH_DAYS = 731


@dataclass(frozen=True)
class SendRules:
    """A course's schedule settings, apart from the course, so the schedule stays pure.

    ``send_days`` are weekday numbers (Monday is 0); ``skip_dates`` are exact days and
    ``skip_yearly`` (month, day) pairs skipped every year, such as (12, 25).
    """

    cadence_days: int = 1
    send_hour: int = 9
    send_days: frozenset[int] = EVERY_DAY
    skip_dates: frozenset[date] = frozenset()
    skip_yearly: frozenset[tuple[int, int]] = frozenset()

    def sends_on(self, day: date) -> bool:
        return (day.weekday() in self.send_days and day not in self.skip_dates
                and (day.month, day.day) not in self.skip_yearly)

    def first_send_day(self, day: date) -> date:
        """``day`` itself when lessons go out that day, else the next day they do."""
        for offset in range(SEARCH_DAYS):
            candidate = day + timedelta(days=offset)
            if self.sends_on(candidate):
                return candidate
        return day


def next_send_time(last_sent: datetime, timezone: str, rules: SendRules, *,
                   days: int | None = None) -> datetime:
    """The UTC instant the lesson after one sent at ``last_sent`` is due.

    ``days`` local calendar days (the course's cadence unless given: a lesson's own
    ``delay_days``, a gated wait, or 0 for "today's slot") after the local day of
    ``last_sent``, moved on to the first day the course sends (its send days, not a skipped
    date), at ``send_hour`` local time in ``timezone``; correct across DST changes.
    """
    tz = ZoneInfo(timezone)
    wait = rules.cadence_days if days is None else days
    day = last_sent.astimezone(tz).date() + timedelta(days=wait)
    return local_instant(rules.first_send_day(day), rules.send_hour, tz)


def next_slot(now: datetime, timezone: str, rules: SendRules) -> datetime:
    """The next send slot strictly after ``now``: today's if it is still ahead, else the
    next day the course sends (a resume, an import, a move to another lesson)."""
    slot = next_send_time(now, timezone, rules, days=0)
    if slot <= now:
        slot = next_send_time(now, timezone, rules, days=1)
    return slot
