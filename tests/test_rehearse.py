"""``flask course rehearse``: the real tick and sender, on a simulated clock, for one address."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes

import time_machine

from course.extensions import db
from course.models import Delivery, Status, Subscriber
from tests.helpers import add_subscriber


def outbox_subjects(path) -> list[str]:
    msgs = [message_from_bytes(p.read_bytes()) for p in path.glob("*.eml")]
    return sorted(str(m["Subject"]) for m in msgs if m["To"].endswith("<you@example.test>"))


def test_rehearsal_lands_every_lesson_in_the_outbox(make_app, tmp_path):
    outbox = tmp_path / "rehearsal-outbox"
    app = make_app(MAIL_BACKEND="outbox", OUTBOX_DIR=str(outbox))
    result = app.test_cli_runner().invoke(
        args=["course", "rehearse", "--days", "12", "--timezone", "Europe/Paris",
              "you@example.test"]
    )
    assert result.exit_code == 0, result.output
    assert "10 lesson(s) sent; subscriber is now finished" in result.output
    for n in range(1, 11):
        assert f"lesson {n}: Day {n}:" in result.output
    # Lessons after the first land at 09:00 Paris time.
    assert result.output.count(" 09:00 CET ") == 9
    with app.app_context():
        from course.content import current_course

        expected = sorted(lesson.subject for lesson in current_course().lessons)
        sub = db.session.scalar(db.select(Subscriber).where(Subscriber.email == "you@example.test"))
        assert sub.status == Status.FINISHED
    assert outbox_subjects(outbox) == expected


def test_rehearsal_for_fewer_days_stops_part_way(make_app, tmp_path):
    app = make_app(MAIL_BACKEND="outbox", OUTBOX_DIR=str(tmp_path / "o"))
    # Started at noon UTC: lesson 1 now, then 09:00 on each of the next three days.
    with time_machine.travel(datetime(2026, 3, 2, 12, 0, tzinfo=UTC), tick=True):
        result = app.test_cli_runner().invoke(args=["course", "rehearse", "--days", "3",
                                                    "you@example.test"])
    assert result.exit_code == 0, result.output
    assert "4 lesson(s) sent; subscriber is now active, next lesson due" in result.output


def test_rehearsal_touches_no_real_subscriber(make_app, tmp_path, outbox):
    app = make_app()  # memory backend
    with app.app_context():
        real_id = add_subscriber("real@example.com").id
    result = app.test_cli_runner().invoke(args=["course", "rehearse", "--days", "12",
                                                "you@example.test"])
    assert result.exit_code == 0, result.output
    assert {m["To"].addresses[0].addr_spec for m in outbox} == {"you@example.test"}
    with app.app_context():
        assert db.session.scalars(
            db.select(Delivery).where(Delivery.subscriber_id == real_id)
        ).all() == []


def test_rehearsal_refuses_a_real_subscribers_address(app):
    with app.app_context():
        add_subscriber("real@example.com")
    result = app.test_cli_runner().invoke(args=["course", "rehearse", "real@example.com"])
    assert result.exit_code == 2
    assert "is a real subscriber" in result.output


def test_rehearsal_can_be_run_again(app, outbox):
    runner = app.test_cli_runner()
    for _ in range(2):
        result = runner.invoke(args=["course", "rehearse", "--days", "12", "you@example.test"])
        assert result.exit_code == 0, result.output
    assert len(outbox) == 20


def test_rehearsal_rejects_bad_input_clearly(app):
    runner = app.test_cli_runner()
    bad_email = runner.invoke(args=["course", "rehearse", "not-an-email"])
    assert bad_email.exit_code == 2 and "is not a valid email address" in bad_email.output
    bad_zone = runner.invoke(args=["course", "rehearse", "--timezone", "Mars/Base",
                                   "you@example.test"])
    assert bad_zone.exit_code == 2 and "unknown time zone 'Mars/Base'" in bad_zone.output
