"""A whole course through a real RQ worker, with the clock moved across a DST change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import time_machine

from course import queue, signup
from course.extensions import db
from course.models import Delivery, DeliveryStatus, SignupRequest, Status, Subscriber
from tests.conftest import run_jobs

NEW_YORK = ZoneInfo("America/New_York")


def cron_tick(app) -> None:
    """What ``rq cron workers/cron.py`` does every minute: enqueue the tick job."""
    with app.app_context():
        queue.enqueue("workers.tasks.tick", queue_name=queue.TICK_QUEUE, retries=0)
    run_jobs(app)


def lesson_subjects(outbox) -> list[str]:
    return [m["Subject"] for m in outbox if m["Subject"].startswith("Day ")]


def test_whole_course_arrives_once_in_order_at_9am_local_across_the_dst_change(app, outbox):
    # Tuesday 27 October 2026, 15:00 in New York; the US falls back on Sunday 1 November.
    start = datetime(2026, 10, 27, 15, 0, tzinfo=NEW_YORK)
    with time_machine.travel(start, tick=True) as clock:
        with app.test_request_context():
            request_id = signup.signup("learner@example.com", "Lee", "America/New_York",
                                       signup.Consent(ip="127.0.0.1", user_agent="pytest")).id
        run_jobs(app)  # the job makes the subscriber and sends the confirmation
        assert [m["Subject"] for m in outbox] == [
            "Please confirm your spot in Networking for career changers"
        ]
        with app.app_context():
            req = db.session.get(SignupRequest, request_id)
            sub_id = req.subscriber_id
            signup.confirm(sub_id, req.nonce)
        run_jobs(app)  # the immediate tick, then lesson 1
        assert len(lesson_subjects(outbox)) == 1, "lesson 1 goes out right away"

        for position in range(2, 11):
            with app.app_context():
                due = db.session.get(Subscriber, sub_id).next_send_at
            local = due.astimezone(NEW_YORK)
            assert (local.hour, local.minute) == (9, 0), f"lesson {position} due at {local}"
            # A minute early, the cron tick finds nothing to send.
            clock.move_to(due - timedelta(minutes=1))
            cron_tick(app)
            assert len(lesson_subjects(outbox)) == position - 1
            # At the send hour, exactly one lesson arrives.
            clock.move_to(due + timedelta(seconds=30))
            cron_tick(app)
            cron_tick(app)  # a duplicate tick changes nothing
            assert len(lesson_subjects(outbox)) == position

        # After the last lesson nothing more is ever sent.
        clock.move_to(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))
        cron_tick(app)

    with app.app_context():
        from course.content import current_course

        assert lesson_subjects(outbox) == [lesson.subject for lesson in current_course().lessons]
        sub = db.session.get(Subscriber, sub_id)
        assert sub.status == Status.FINISHED
        rows = db.session.scalars(
            db.select(Delivery).where(Delivery.subscriber_id == sub_id).order_by(Delivery.position)
        ).all()
        assert [d.position for d in rows] == list(range(1, 11))
        assert {d.status for d in rows} == {DeliveryStatus.SENT}
        sent_local = [d.sent_at.astimezone(NEW_YORK) for d in rows]
    # One per day, at 09:00 New York time both before (EDT, UTC-4) and after (EST, UTC-5).
    assert [t.date().isoformat() for t in sent_local[1:]] == [
        f"2026-{m:02d}-{d:02d}" for m, d in
        [(10, 28), (10, 29), (10, 30), (10, 31), (11, 1), (11, 2), (11, 3), (11, 4), (11, 5)]
    ]
    assert all(t.hour == 9 for t in sent_local[1:])
    offsets = {t.utcoffset() for t in sent_local[1:]}
    assert offsets == {timedelta(hours=-4), timedelta(hours=-5)}


def test_the_cron_file_schedules_the_tick_the_tracking_flush_and_the_webhook_sweep(
    redis_conn,
) -> None:
    """``rq cron workers/cron.py`` loads our file with rq's own loader, into real jobs."""
    from pathlib import Path

    from rq.cron import CronScheduler

    scheduler = CronScheduler(connection=redis_conn)
    scheduler.load_config_from_file(str(Path(__file__).parents[1] / "workers" / "cron.py"))
    jobs = {job.func.__name__: (job.queue_name, job.interval) for job in scheduler.get_jobs()}
    assert jobs == {
        "tick": (queue.TICK_QUEUE, 60),
        "flush_tracking": (queue.TICK_QUEUE, 5),
        "requeue_webhooks": (queue.TICK_QUEUE, 300),
        "send_owed_confirmations": (queue.TICK_QUEUE, 60),
    }
