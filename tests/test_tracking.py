"""Links in lesson emails: open pixel, click redirect, mark done, and the lesson in the browser."""

from __future__ import annotations

import re
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from conftest import csrf_from
from flask import Flask
from flask.testing import FlaskClient

from course import tokens, tracking_buffer
from course.content import current_course
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Event, EventKind, Status, Subscriber
from course.timeutil import utcnow

URL = "https://example.org/guide?a=1&b=two"
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
}


def add_subscriber(app: Flask, *, sent: int = 3, done: int = 0, status: str = Status.ACTIVE,
                   next_send_at: datetime | None = None, tz: str = "UTC") -> list[int]:
    """A subscriber who has been sent lessons 1..sent, the first ``done`` marked done.

    Returns the delivery ids by position.
    """
    with app.app_context():
        course = current_course()
        sub = Subscriber(email="ann@example.com", name="Ann", timezone=tz, status=status,
                         next_position=sent + 1, confirmed_at=utcnow(), next_send_at=next_send_at)
        db.session.add(sub)
        db.session.flush()
        deliveries = [
            Delivery(subscriber_id=sub.id, lesson_slug=lesson.slug, position=lesson.position,
                     status=DeliveryStatus.SENT, sent_at=utcnow(),
                     completed_at=utcnow() if lesson.position <= done else None)
            for lesson in course.lessons[:sent]
        ]
        db.session.add_all(deliveries)
        db.session.commit()
        return [d.id for d in deliveries]


def token(app: Flask, purpose: str, payload: Any) -> str:
    with app.app_context():
        return tokens.make(purpose, payload)


def flush(app: Flask) -> None:
    """Opens and clicks wait in Redis until the flusher stores them (as the cron job does)."""
    with app.app_context():
        tracking_buffer.flush()


def delivery(app: Flask, delivery_id: int) -> Delivery:
    flush(app)
    with app.app_context():
        d = db.session.get(Delivery, delivery_id)
        assert d is not None
        db.session.expunge(d)
        return d


def events(app: Flask, kind: str | None = None) -> list[Event]:
    flush(app)
    with app.app_context():
        stmt = db.select(Event).order_by(Event.id)
        if kind:
            stmt = stmt.where(Event.kind == kind)
        found = list(db.session.scalars(stmt))
        for e in found:
            db.session.expunge(e)
        return found


def assert_transparent_gif(res: Any) -> None:
    assert res.status_code == 200
    assert res.mimetype == "image/gif"
    body = res.get_data()
    assert body.startswith(b"GIF89a") and body.endswith(b";")
    assert struct.unpack("<HH", body[6:10]) == (1, 1)
    assert b"\x21\xf9\x04\x01" in body  # graphic control extension with transparency on
    for name, value in NO_CACHE.items():
        assert res.headers[name] == value


# Open pixel


def test_pixel_records_the_first_open_and_counts_every_one(
    app: Flask, client: FlaskClient
) -> None:
    [d1, *_] = add_subscriber(app)
    url = f"/o/{token(app, 'open', {'d': d1})}.gif"
    res = client.get(url, headers={"User-Agent": "MailApp/1.0"})
    assert_transparent_gif(res)
    first = delivery(app, d1)
    assert first.open_count == 1 and first.opened_at is not None
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=2)):
        assert_transparent_gif(client.get(url))
    second = delivery(app, d1)
    assert second.open_count == 2 and second.opened_at == first.opened_at
    opens = events(app, EventKind.OPEN)
    assert [(e.delivery_id, e.url) for e in opens] == [(d1, None), (d1, None)]
    assert opens[0].user_agent == "MailApp/1.0" and opens[0].subscriber_id is not None


@pytest.mark.parametrize("kind", ["garbage", "tampered", "click-token", "missing-delivery"])
def test_pixel_with_a_bad_token_still_returns_the_gif_and_records_nothing(
    app: Flask, client: FlaskClient, kind: str
) -> None:
    [d1, *_] = add_subscriber(app)
    good = token(app, "open", {"d": d1})
    bad = {
        "garbage": "garbage",
        "tampered": good[:-2] + ("xy" if not good.endswith("xy") else "yz"),
        "click-token": token(app, "click", {"d": d1, "u": URL}),
        "missing-delivery": token(app, "open", {"d": 987654}),
    }[kind]
    assert_transparent_gif(client.get(f"/o/{bad}.gif"))
    assert delivery(app, d1).open_count == 0
    assert events(app) == []


def test_pixel_head_request_records_nothing(app: Flask, client: FlaskClient) -> None:
    [d1, *_] = add_subscriber(app)
    res = client.head(f"/o/{token(app, 'open', {'d': d1})}.gif")
    assert res.status_code == 200 and res.headers["Cache-Control"] == NO_CACHE["Cache-Control"]
    assert delivery(app, d1).open_count == 0


# Click redirect


def test_click_redirects_to_the_signed_url_and_records_click_and_open(
    app: Flask, client: FlaskClient
) -> None:
    [d1, *_] = add_subscriber(app)
    url = f"/c/{token(app, 'click', {'d': d1, 'u': URL})}"
    res = client.get(url, headers={"User-Agent": "Browser/2"})
    assert res.status_code == 302
    assert res.headers["Location"] == URL
    first = delivery(app, d1)
    assert first.click_count == 1 and first.clicked_at is not None
    assert first.opened_at == first.clicked_at and first.open_count == 1  # images were off
    [click] = events(app, EventKind.CLICK)
    assert (click.delivery_id, click.url, click.user_agent) == (d1, URL, "Browser/2")
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=1)):
        assert client.get(url).headers["Location"] == URL
    second = delivery(app, d1)
    assert second.click_count == 2 and second.clicked_at == first.clicked_at
    assert second.open_count == 1  # an open already known is not counted again
    assert len(events(app, EventKind.CLICK)) == 2


def test_click_after_an_open_keeps_the_open_time(app: Flask, client: FlaskClient) -> None:
    [d1, *_] = add_subscriber(app)
    client.get(f"/o/{token(app, 'open', {'d': d1})}.gif")
    opened = delivery(app, d1).opened_at
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=5)):
        client.get(f"/c/{token(app, 'click', {'d': d1, 'u': URL})}")
    after = delivery(app, d1)
    assert after.opened_at == opened and after.open_count == 1 and after.click_count == 1


@pytest.mark.parametrize(
    "kind", ["garbage", "tampered", "open-token", "web-token", "javascript-url", "relative-url",
             "no-url"],
)
def test_bad_click_token_is_a_400_page_and_never_a_redirect(
    app: Flask, client: FlaskClient, kind: str
) -> None:
    [d1, *_] = add_subscriber(app)
    good = token(app, "click", {"d": d1, "u": URL})
    bad = {
        "garbage": "garbage",
        "tampered": good[:-2] + ("xy" if not good.endswith("xy") else "yz"),
        "open-token": token(app, "open", {"d": d1}),
        "web-token": token(app, "web", {"d": d1}),
        "javascript-url": token(app, "click", {"d": d1, "u": "javascript:alert(1)"}),
        "relative-url": token(app, "click", {"d": d1, "u": "//evil.example/"}),
        "no-url": token(app, "click", {"d": d1}),
    }[kind]
    res = client.get(f"/c/{bad}")
    assert res.status_code == 400
    assert "Location" not in res.headers
    assert "This link is not valid" in res.get_data(as_text=True)
    assert delivery(app, d1).click_count == 0 and events(app) == []


def test_tampering_with_the_url_in_a_click_token_breaks_it(app: Flask, client: FlaskClient) -> None:
    [d1, *_] = add_subscriber(app)
    good = token(app, "click", {"d": d1, "u": URL})
    payload, rest = good.split(".", 1)
    evil = token(app, "click", {"d": d1, "u": "https://evil.example/"}).split(".", 1)[0]
    res = client.get(f"/c/{evil}.{rest}")
    assert res.status_code == 400 and "Location" not in res.headers
    assert payload != evil


def test_click_for_a_deleted_delivery_still_takes_the_reader_there(
    app: Flask, client: FlaskClient
) -> None:
    res = client.get(f"/c/{token(app, 'click', {'d': 31337, 'u': URL})}")
    assert res.status_code == 302 and res.headers["Location"] == URL
    assert events(app) == []


# Mark done


def done_url(app: Flask, delivery_id: int) -> str:
    return f"/done/{token(app, 'complete', {'d': delivery_id})}"


def mark_done(client: FlaskClient, url: str) -> Any:
    html = client.get(url).get_data(as_text=True)
    return client.post(url, data={"csrf_token": csrf_from(html)})


def test_done_get_shows_a_self_submitting_button_and_records_nothing(
    app: Flask, client: FlaskClient
) -> None:
    ids = add_subscriber(app)
    url = done_url(app, ids[2])
    res = client.get(url)
    html = res.get_data(as_text=True)
    assert res.status_code == 200
    assert re.search(rf'<form method="post" action="{re.escape(url)}"[^>]*data-autosubmit', html)
    assert "Mark lesson 3 done</button>" in html
    assert 'src="/static/autosubmit.js"' in html
    assert delivery(app, ids[2]).completed_at is None and events(app) == []


def test_done_post_records_completion_once_and_shows_progress(
    app: Flask, client: FlaskClient
) -> None:
    ids = add_subscriber(app, sent=3, done=2)
    url = done_url(app, ids[2])
    res = mark_done(client, url)
    html = res.get_data(as_text=True)
    assert res.status_code == 200
    assert "3 of 10 lessons done" in html
    assert '<progress class="progress" max="10" value="3"' in html
    assert " style=" not in html
    completed = delivery(app, ids[2]).completed_at
    assert completed is not None
    # The same form posted again (a double click, or the back button): nothing new.
    again = client.post(url, data={"csrf_token": csrf_from(client.get("/").get_data(as_text=True))})
    assert again.status_code == 200 and "3 of 10 lessons done" in again.get_data(as_text=True)
    assert delivery(app, ids[2]).completed_at == completed
    assert [(e.kind, e.delivery_id) for e in events(app)] == [(EventKind.COMPLETE, ids[2])]


def test_done_get_after_completion_shows_progress_without_recording(
    app: Flask, client: FlaskClient
) -> None:
    ids = add_subscriber(app, sent=3, done=3)
    html = client.get(done_url(app, ids[0])).get_data(as_text=True)
    assert "3 of 10 lessons done" in html and "data-autosubmit" not in html
    assert events(app) == []


def test_done_without_csrf_token_is_refused(app: Flask, client: FlaskClient) -> None:
    ids = add_subscriber(app)
    res = client.post(done_url(app, ids[0]))
    assert res.status_code == 400
    assert delivery(app, ids[0]).completed_at is None and events(app) == []


@pytest.mark.parametrize("kind", ["garbage", "open-token", "web-token"])
def test_done_with_a_bad_or_foreign_token_is_a_400_page(
    app: Flask, client: FlaskClient, kind: str
) -> None:
    ids = add_subscriber(app)
    bad = {"garbage": "garbage", "open-token": token(app, "open", {"d": ids[0]}),
           "web-token": token(app, "web", {"d": ids[0]})}[kind]
    assert client.get(f"/done/{bad}").status_code == 400
    csrf = csrf_from(client.get("/").get_data(as_text=True))
    assert client.post(f"/done/{bad}", data={"csrf_token": csrf}).status_code == 400
    assert events(app) == []


def test_progress_says_when_the_next_lesson_arrives(app: Flask, client: FlaskClient) -> None:
    # Noon in Paris on a Monday; lesson 4 is due at 09:00 Paris time on Tuesday.
    with time_machine.travel(datetime(2025, 3, 10, 11, 0, tzinfo=UTC), tick=False):
        ids = add_subscriber(app, sent=3, tz="Europe/Paris",
                             next_send_at=datetime(2025, 3, 11, 8, 0, tzinfo=UTC))
        html = mark_done(client, done_url(app, ids[2])).get_data(as_text=True)
    assert "1 of 10 lessons done" in html
    assert ("Lesson 4, &ldquo;Tell them why you picked them&rdquo;, arrives tomorrow, "
            "around 09:00 (Europe/Paris time).") in html


def test_progress_points_to_a_next_lesson_already_in_the_inbox(
    app: Flask, client: FlaskClient
) -> None:
    ids = add_subscriber(app, sent=3)
    html = mark_done(client, done_url(app, ids[0])).get_data(as_text=True)
    assert "Lesson 2, &ldquo;When your life suits them as it is&rdquo;, is already" in html
    link = re.search(r'<a href="(/l/[^"]+)">Read it now</a>', html)
    assert link is not None
    assert "When your life suits them as it is" in client.get(link.group(1)).get_data(
        as_text=True)


def test_progress_shows_the_completion_message_when_every_lesson_is_done(
    app: Flask, client: FlaskClient
) -> None:
    ids = add_subscriber(app, sent=10, done=9, status=Status.FINISHED)
    html = mark_done(client, done_url(app, ids[9])).get_data(as_text=True)
    assert "10 of 10 lessons done" in html
    assert "<strong>Congratulations, you&rsquo;ve finished all ten lessons!</strong>" in html


def test_last_lesson_done_with_others_left_says_how_many(app: Flask, client: FlaskClient) -> None:
    ids = add_subscriber(app, sent=10, done=7, status=Status.FINISHED)
    html = mark_done(client, done_url(app, ids[9])).get_data(as_text=True)
    assert "8 of 10 lessons done" in html and "That was the last lesson. 2 lessons are" in html


def test_done_link_for_a_deleted_delivery_is_a_404_page(app: Flask, client: FlaskClient) -> None:
    res = client.get(done_url(app, 555_555))
    assert res.status_code == 404
    assert "no longer available" in res.get_data(as_text=True)


# The lesson in the browser


def test_lesson_page_shows_the_lesson_in_the_site_layout_and_changes_nothing(
    app: Flask, client: FlaskClient
) -> None:
    [d1, *_] = add_subscriber(app)
    res = client.get(f"/l/{token(app, 'web', {'d': d1})}")
    html = res.get_data(as_text=True)
    assert res.status_code == 200
    assert "<h1>When your cheerleaders go quiet</h1>" in html
    assert "<h2>Change makes people nervous</h2>" in html  # the body, rendered from Markdown
    assert "Lesson 1 of 10" in html
    assert '<link rel="stylesheet" href="/static/site.css">' in html
    assert " style=" not in html and "<style" not in html
    link = re.search(r'<a class="button" href="(/done/[^"]+)">Mark lesson 1 done</a>', html)
    assert link is not None
    assert "Mark lesson 1 done</button>" in client.get(link.group(1)).get_data(as_text=True)
    d = delivery(app, d1)
    assert (d.open_count, d.click_count, d.completed_at) == (0, 0, None)
    assert events(app) == []


def test_lesson_page_for_a_done_lesson_says_so(app: Flask, client: FlaskClient) -> None:
    [d1, *_] = add_subscriber(app, done=1)
    html = client.get(f"/l/{token(app, 'web', {'d': d1})}").get_data(as_text=True)
    assert "marked this lesson done" in html and "/done/" not in html


@pytest.mark.parametrize("kind", ["garbage", "complete-token"])
def test_lesson_page_with_a_bad_token_is_a_400_page(
    app: Flask, client: FlaskClient, kind: str
) -> None:
    [d1, *_] = add_subscriber(app)
    bad = "garbage" if kind == "garbage" else token(app, "complete", {"d": d1})
    res = client.get(f"/l/{bad}")
    assert res.status_code == 400 and "This link is not valid" in res.get_data(as_text=True)


def test_lesson_page_is_get_only(app: Flask, client: FlaskClient) -> None:
    [d1, *_] = add_subscriber(app)
    res = client.post(f"/l/{token(app, 'web', {'d': d1})}")
    assert res.status_code in (400, 405)
    assert events(app) == []
