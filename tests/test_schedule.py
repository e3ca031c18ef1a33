"""Send times: the course's local hour in the subscriber's zone, right across DST."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from course.schedule import local_instant, next_send_time, valid_timezone


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("last_sent", "zone", "expected"),
    [
        # Plain case: next local day at 09:00.
        ("2026-03-02T15:00", "Europe/Paris", "2026-03-03T08:00"),
        # Europe springs forward on 29 March 2026: 09:00 CEST is 07:00 UTC.
        ("2026-03-28T10:00", "Europe/Paris", "2026-03-29T07:00"),
        # The US falls back on 1 November 2026: 09:00 EST is 14:00 UTC, the day before 13:00.
        ("2026-10-31T13:00", "America/New_York", "2026-11-01T14:00"),
        ("2026-10-30T13:00", "America/New_York", "2026-10-31T13:00"),
        # 23:30 in Tokyo: the next lesson is 09:30 later, the next local morning.
        ("2026-06-10T14:30", "Asia/Tokyo", "2026-06-11T00:00"),
        # Half-hour zone.
        ("2026-06-10T00:00", "Asia/Kolkata", "2026-06-11T03:30"),
    ],
)
def test_next_lesson_is_at_the_local_send_hour(last_sent, zone, expected):
    got = next_send_time(at(last_sent), zone, cadence_days=1, send_hour=9, skip_weekends=False)
    assert got == at(expected)
    assert got.tzinfo is not None


def test_cadence_counts_local_days():
    got = next_send_time(at("2026-06-01T12:00"), "UTC", cadence_days=3, send_hour=9,
                         skip_weekends=False)
    assert got == at("2026-06-04T09:00")


def test_weekends_roll_to_monday_when_skipped():
    # Friday 5 June 2026 -> Saturday is skipped -> Monday 8 June.
    friday = at("2026-06-05T10:00")
    assert next_send_time(friday, "UTC", cadence_days=1, send_hour=9,
                          skip_weekends=True) == at("2026-06-08T09:00")
    assert next_send_time(friday, "UTC", cadence_days=1, send_hour=9,
                          skip_weekends=False) == at("2026-06-06T09:00")


def test_hour_skipped_by_dst_moves_forward_not_back():
    from datetime import date
    from zoneinfo import ZoneInfo

    # 02:00 does not exist in New York on 8 March 2026.
    got = local_instant(date(2026, 3, 8), 2, ZoneInfo("America/New_York"))
    assert got == at("2026-03-08T07:00")  # 03:00 EDT


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/Argentina/Buenos_Aires", "UTC"])
def test_real_zones_are_valid(zone):
    assert valid_timezone(zone)


@pytest.mark.parametrize("zone", ["", "Mars/Olympus", "../../etc/passwd", "x" * 100, None,
                                  "Europe/Paris\n"])
def test_made_up_zones_are_not(zone):
    assert not valid_timezone(zone)
