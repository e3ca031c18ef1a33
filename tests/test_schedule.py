"""Send times: the course's local hour in the subscriber's zone, right across DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from course.schedule import SendRules, local_instant, next_send_time, next_slot, valid_timezone

DAILY = SendRules(cadence_days=1, send_hour=9)
WEEKDAYS = frozenset(range(5))


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
    got = next_send_time(at(last_sent), zone, DAILY)
    assert got == at(expected)
    assert got.tzinfo is not None


def test_cadence_counts_local_days():
    got = next_send_time(at("2026-06-01T12:00"), "UTC", SendRules(cadence_days=3))
    assert got == at("2026-06-04T09:00")


def test_weekends_roll_to_monday_when_skipped():
    # Friday 5 June 2026 -> Saturday is skipped -> Monday 8 June.
    friday = at("2026-06-05T10:00")
    assert next_send_time(friday, "UTC", SendRules(send_days=WEEKDAYS)) == at("2026-06-08T09:00")
    assert next_send_time(friday, "UTC", DAILY) == at("2026-06-06T09:00")


MWF = frozenset({0, 2, 4})
SUNDAYS = frozenset({6})


@pytest.mark.parametrize(
    ("last_sent", "zone", "rules", "days", "expected"),
    [
        # Mon/Wed/Fri: from Monday 1 June, Tuesday is not a send day.
        ("2026-06-01T10:00", "UTC", SendRules(send_days=MWF), None, "2026-06-03T09:00"),
        # Tuesdays only: a week later.
        ("2026-06-02T10:00", "UTC", SendRules(send_days=frozenset({1})), None,
         "2026-06-09T09:00"),
        # The weekday is the subscriber's: 23:30 UTC Friday is Saturday morning in Tokyo,
        # so the next weekday is Monday 09:00 JST (00:00 UTC), not Saturday.
        ("2026-06-05T23:30", "Asia/Tokyo", SendRules(send_days=WEEKDAYS), None,
         "2026-06-08T00:00"),
        # Sundays only, across Europe's spring-forward Sunday: 09:00 CEST is 07:00 UTC.
        ("2026-03-22T08:00", "Europe/Paris", SendRules(send_days=SUNDAYS), None,
         "2026-03-29T07:00"),
        # Mon-Fri over the DST weekend: Monday at 09:00 CEST.
        ("2026-03-27T08:00", "Europe/Paris", SendRules(send_days=WEEKDAYS), None,
         "2026-03-30T07:00"),
        # Sundays only, across the US fall-back Sunday: 09:00 EST is 14:00 UTC.
        ("2026-10-25T13:00", "America/New_York", SendRules(send_days=SUNDAYS), None,
         "2026-11-01T14:00"),
        # A skipped date (Christmas, a Friday) on Mon-Fri: Monday 28 December.
        ("2026-12-24T10:00", "UTC",
         SendRules(send_days=WEEKDAYS, skip_dates=frozenset({date(2026, 12, 25)})), None,
         "2026-12-28T09:00"),
        # The same date as a yearly skip, in a later year.
        ("2027-12-24T10:00", "UTC", SendRules(skip_yearly=frozenset({(12, 25)})), None,
         "2027-12-26T09:00"),
        # A skipped date is a local date: in Auckland the 25th starts at 11:00 UTC on the
        # 24th, so the lesson goes on the 26th at 09:00 NZDT, which is the 25th in UTC.
        ("2026-12-23T21:00", "Pacific/Auckland",
         SendRules(skip_dates=frozenset({date(2026, 12, 25)})), None, "2026-12-25T20:00"),
        # Skipped dates run on: 1 and 2 January, then Saturday the 3rd.
        ("2026-12-31T10:00", "UTC", SendRules(skip_yearly=frozenset({(1, 1), (1, 2)})), None,
         "2027-01-03T09:00"),
        # A lesson's delay_days replaces the cadence: three days after Wednesday is Saturday,
        # on Mon-Fri that is Monday.
        ("2026-06-03T10:00", "UTC", SendRules(send_days=WEEKDAYS), 3, "2026-06-08T09:00"),
        ("2026-06-03T10:00", "UTC", SendRules(cadence_days=1), 2, "2026-06-05T09:00"),
        # delay_days across the spring-forward night in New York (8 March 2026).
        ("2026-03-06T14:00", "America/New_York", SendRules(send_hour=8), 2,
         "2026-03-08T12:00"),
        # 0 days: today's slot, when today is a send day.
        ("2026-06-03T05:00", "UTC", SendRules(send_days=WEEKDAYS), 0, "2026-06-03T09:00"),
        ("2026-06-06T05:00", "UTC", SendRules(send_days=WEEKDAYS), 0, "2026-06-08T09:00"),
    ],
)
def test_send_days_skipped_dates_and_delays(last_sent, zone, rules, days, expected):
    assert next_send_time(at(last_sent), zone, rules, days=days) == at(expected)


@pytest.mark.parametrize(
    ("now", "rules", "expected"),
    [
        ("2026-06-03T08:59", SendRules(send_days=WEEKDAYS), "2026-06-03T09:00"),
        ("2026-06-03T09:00", SendRules(send_days=WEEKDAYS), "2026-06-04T09:00"),
        ("2026-06-05T12:00", SendRules(send_days=WEEKDAYS), "2026-06-08T09:00"),
        ("2026-06-03T12:00",
         SendRules(skip_dates=frozenset({date(2026, 6, 4), date(2026, 6, 5)})),
         "2026-06-06T09:00"),
    ],
)
def test_next_slot_is_strictly_ahead_and_on_a_send_day(now, rules, expected):
    assert next_slot(at(now), "UTC", rules) == at(expected)


def test_a_calendar_with_no_free_day_gives_the_nominal_day_instead_of_looping():
    every_date = frozenset((d.month, d.day) for d in
                           (date(2024, 1, 1) + timedelta(days=i) for i in range(366)))
    rules = SendRules(skip_yearly=every_date)
    assert next_send_time(at("2026-06-01T10:00"), "UTC", rules) == at("2026-06-02T09:00")


def test_hour_skipped_by_dst_moves_forward_not_back():
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
