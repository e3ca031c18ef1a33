"""Progress-gated courses: the next lesson waits for "done", or for ``max_wait_days``.

The gated course here sends at 09:00 UTC every 2 days and waits at most 5 days; lesson 1
goes out on Monday 10 March 2025 at 09:00, so without gating lesson 2 would be due on
Wednesday at 09:00, and the longest wait ends on Saturday at 09:00.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import time_machine
from conftest import csrf_from
from flask import Flask

from course import pipeline, tokens
from course.extensions import db
from course.models import Delivery, Status, Subscriber
from tests.helpers import copy_shipped_course

MON = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=UTC)


WED_9, FRI_9, SAT_9 = at(12, 9), at(14, 9), at(15, 9)


@pytest.fixture
def gated(make_app: Any, tmp_path: Path) -> Flask:
    lessons = copy_shipped_course(tmp_path)
    course_file = lessons / "course.yml"
    text = course_file.read_text().replace("cadence_days: 1\n", "cadence_days: 2\n")
    course_file.write_text(text + "progress_gated: true\nmax_wait_days: 5\n")
    app: Flask = make_app(LESSONS_DIR=str(lessons.parent))
    with app.app_context():
        db.session.add(Subscriber(email="ann@example.com", name="Ann", timezone="UTC",
                                  status=Status.ACTIVE, next_position=1, next_send_at=MON))
        db.session.commit()
    return app


def tick_at(app: Flask, when: datetime) -> list[int]:
    """Run the scheduler tick at ``when``, sending in-process; the positions sent."""
    with time_machine.travel(when, tick=False), app.app_context():
        before = set(db.session.scalars(db.select(Delivery.id)))
        pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
        new = db.session.scalars(db.select(Delivery).where(Delivery.id.not_in(before)))
        return sorted(d.position for d in new if d.status == "sent")


def next_send_at(app: Flask) -> datetime | None:
    with app.app_context():
        return db.session.scalar(db.select(Subscriber.next_send_at))


def mark_done_at(app: Flask, when: datetime, position: int) -> str:
    with time_machine.travel(when, tick=False):
        with app.app_context():
            delivery_id = db.session.scalar(
                db.select(Delivery.id).where(Delivery.position == position))
            url = f"/done/{tokens.make('complete', {'d': delivery_id})}"
        client = app.test_client()
        csrf = csrf_from(client.get(url).get_data(as_text=True))
        res = client.post(url, data={"csrf_token": csrf})
        assert res.status_code == 200
        return res.get_data(as_text=True)


def test_the_next_lesson_waits_for_the_longest_wait_without_done(gated: Flask,
                                                                 outbox: list[Any]) -> None:
    assert tick_at(gated, MON) == [1]
    assert next_send_at(gated) == SAT_9
    for when in (WED_9, at(13, 9), FRI_9, at(15, 8, 59)):
        assert tick_at(gated, when) == []
    assert tick_at(gated, SAT_9) == [2]
    assert next_send_at(gated) == at(20, 9)  # lesson 3 waits the same way
    assert len(outbox) == 2


def test_done_releases_the_next_lesson_at_the_next_send_hour(gated: Flask,
                                                             outbox: list[Any]) -> None:
    tick_at(gated, MON)
    assert tick_at(gated, WED_9) == []  # the normal cadence alone does not send it
    html = mark_done_at(gated, at(13, 15), 1)  # Thursday afternoon
    assert next_send_at(gated) == FRI_9
    assert "arrives tomorrow, around 09:00 (UTC time)" in html
    assert tick_at(gated, at(14, 8, 59)) == []
    assert tick_at(gated, FRI_9) == [2]
    assert len(outbox) == 2


def test_done_before_the_send_hour_releases_it_the_same_day(gated: Flask) -> None:
    tick_at(gated, MON)
    mark_done_at(gated, at(13, 7), 1)  # Thursday, before 09:00
    assert next_send_at(gated) == at(13, 9)
    assert tick_at(gated, at(13, 9)) == [2]


def test_done_at_once_never_sends_sooner_than_the_cadence(gated: Flask) -> None:
    tick_at(gated, MON)
    mark_done_at(gated, at(10, 10), 1)  # an hour after it arrived
    assert next_send_at(gated) == WED_9  # not Tuesday: the course's cadence still holds
    assert tick_at(gated, at(11, 9)) == []
    assert tick_at(gated, WED_9) == [2]


def test_marking_an_older_lesson_done_does_not_release_a_later_one(gated: Flask) -> None:
    tick_at(gated, MON)
    assert tick_at(gated, SAT_9) == [2]  # lesson 2 went out after the longest wait
    mark_done_at(gated, at(15, 12), 1)  # lesson 1 done late: lesson 3 waits for lesson 2
    assert next_send_at(gated) == at(20, 9)
    mark_done_at(gated, at(16, 12), 2)
    assert next_send_at(gated) == at(17, 9)
