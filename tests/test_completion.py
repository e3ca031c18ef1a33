"""Completing the course: marking the last missing lesson done sets ``completed_at`` once."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from conftest import csrf_from
from flask import Flask
from flask.testing import FlaskClient

from course import tokens
from course.content import current_course
from course.extensions import db
from course.models import (
    Delivery,
    DeliveryStatus,
    Event,
    EventKind,
    OutgoingWebhook,
    Status,
    Subscriber,
)
from course.timeutil import utcnow


def add_subscriber(app: Flask, *, done: set[int], extra_slug: str | None = None) -> list[int]:
    """A finished subscriber sent all ten lessons, those at ``done`` positions marked done."""
    with app.app_context():
        course = current_course()
        sub = Subscriber(email="ann@example.com", name="Ann", timezone="UTC",
                         status=Status.FINISHED, next_position=course.length + 1)
        db.session.add(sub)
        db.session.flush()
        rows = [Delivery(subscriber_id=sub.id, lesson_slug=lesson.slug, position=lesson.position,
                         status=DeliveryStatus.SENT, sent_at=utcnow(),
                         completed_at=utcnow() if lesson.position in done else None)
                for lesson in course.lessons]
        if extra_slug:  # a lesson since removed from the course, marked done back then
            rows.append(Delivery(subscriber_id=sub.id, lesson_slug=extra_slug, position=11,
                                 status=DeliveryStatus.SENT, sent_at=utcnow(),
                                 completed_at=utcnow()))
        db.session.add_all(rows)
        db.session.commit()
        return [d.id for d in rows]


def mark_done(app: Flask, client: FlaskClient, delivery_id: int) -> str:
    with app.app_context():
        url = f"/done/{tokens.make('complete', {'d': delivery_id})}"
    page = client.get(url).get_data(as_text=True)
    csrf = csrf_from(page) if "csrf_token" in page else csrf_from(
        client.get("/").get_data(as_text=True))
    res = client.post(url, data={"csrf_token": csrf})
    assert res.status_code == 200
    return res.get_data(as_text=True)


def completed_at(app: Flask) -> datetime | None:
    with app.app_context():
        return db.session.scalar(db.select(Subscriber.completed_at))


def test_marking_the_last_missing_lesson_done_completes_the_course_once(
    app: Flask, client: FlaskClient
) -> None:
    ids = add_subscriber(app, done={1, 2, 3, 5, 6, 7, 8, 9, 10})  # lesson 4 was skipped
    assert completed_at(app) is None
    html = mark_done(app, client, ids[3])
    assert "10 of 10 lessons done" in html
    assert "You&rsquo;ve completed the course" in html
    assert "<strong>Congratulations, you&rsquo;ve finished all ten lessons!</strong>" in html
    first = completed_at(app)
    assert first is not None
    # Posted again (a double click), or another lesson's done link opened later: no change.
    mark_done(app, client, ids[3])
    again = mark_done(app, client, ids[0])
    assert "You&rsquo;ve completed the course" in again
    assert completed_at(app) == first
    with app.app_context():
        kinds = list(db.session.scalars(db.select(Event.kind)))
    assert kinds == [EventKind.COMPLETE]


def test_the_course_is_not_complete_while_a_lesson_is_not_done(
    app: Flask, client: FlaskClient
) -> None:
    ids = add_subscriber(app, done={1, 2, 3, 4, 5, 6, 7, 8})
    html = mark_done(app, client, ids[9])
    assert "9 of 10 lessons done" in html and "completed the course" not in html
    assert completed_at(app) is None


def test_a_done_lesson_no_longer_in_the_course_does_not_count(
    app: Flask, client: FlaskClient
) -> None:
    ids = add_subscriber(app, done={1, 2, 3, 4, 5, 6, 7, 8}, extra_slug="a-retired-lesson")
    html = mark_done(app, client, ids[8])
    assert "9 of 10 lessons done" in html
    assert completed_at(app) is None
    mark_done(app, client, ids[9])
    assert completed_at(app) is not None


def test_the_done_link_of_a_completed_course_says_so(app: Flask, client: FlaskClient) -> None:
    ids = add_subscriber(app, done={1, 2, 3, 4, 5, 6, 7, 8, 9})
    mark_done(app, client, ids[9])
    with app.app_context():
        url = f"/done/{tokens.make('complete', {'d': ids[0]})}"
    html: Any = client.get(url).get_data(as_text=True)
    assert "You&rsquo;ve completed the course" in html and "data-autosubmit" not in html


def test_completions_are_announced_to_webhooks(make_app: Any) -> None:
    app = make_app(WEBHOOK_URLS=("https://hooks.example.org/in",), WEBHOOK_SECRET="s" * 32)
    client = app.test_client()
    ids = add_subscriber(app, done={1, 2, 3, 4, 5, 6, 7, 8})
    mark_done(app, client, ids[8])
    mark_done(app, client, ids[9])
    mark_done(app, client, ids[9])  # again: nothing new
    with app.app_context():
        rows = db.session.scalars(db.select(OutgoingWebhook).order_by(OutgoingWebhook.id))
        sent = [(w.kind, json.loads(w.payload)["data"]) for w in rows]
    assert [kind for kind, _ in sent] == ["lesson.completed", "lesson.completed",
                                          "course.completed"]
    assert sent[1][1]["lesson"]["position"] == 10 and sent[1][1]["delivery_id"] == ids[9]
    assert sent[2][1]["subscriber"]["email"] == "ann@example.com"
    assert sent[2][1]["at"] == completed_at(app).strftime("%Y-%m-%dT%H:%M:%SZ")
