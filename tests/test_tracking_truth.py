"""Tracking that tells the truth: buffered hits are never lost or doubled, machines are flagged.

Opens and clicks are buffered in Redis and stored by the flusher; these tests break the
database and Redis for real (a closed port, a trigger that refuses writes) and check
that every hit lands exactly once, and that proxies, scanners and the hidden canary link
never count as reading.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import SQLAlchemyError

from course import machines, pipeline, tokens, tracking_buffer
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

BROWSER = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
           "(KHTML, like Gecko)")
URL = "https://example.org/guide"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def add_delivery(app: Flask, *, sent_ago: timedelta = timedelta(hours=1)) -> int:
    """A subscriber sent lesson 1 ``sent_ago``; returns the delivery id."""
    with app.app_context():
        sub = Subscriber(email="ann@example.com", name="Ann", timezone="UTC",
                         status=Status.ACTIVE, next_position=2, confirmed_at=utcnow())
        db.session.add(sub)
        db.session.flush()
        d = Delivery(subscriber_id=sub.id, lesson_slug="lesson-1", position=1,
                     status=DeliveryStatus.SENT, sent_at=utcnow() - sent_ago)
        db.session.add(d)
        db.session.commit()
        return d.id


def pixel(app: Flask, client: FlaskClient, delivery_id: int, ua: str = BROWSER) -> None:
    with app.app_context():
        url = f"/o/{tokens.make('open', {'d': delivery_id})}.gif"
    res = client.get(url, headers={"User-Agent": ua})
    assert res.status_code == 200 and res.mimetype == "image/gif"


def click(app: Flask, client: FlaskClient, delivery_id: int, ua: str = BROWSER,
          url: str = URL) -> Any:
    with app.app_context():
        link = f"/c/{tokens.make('click', {'d': delivery_id, 'u': url})}"
    return client.get(link, headers={"User-Agent": ua})


def flush(app: Flask) -> int:
    with app.app_context():
        return tracking_buffer.flush()


def state(app: Flask, delivery_id: int) -> tuple[Delivery, list[Event]]:
    with app.app_context():
        d = db.session.get(Delivery, delivery_id)
        assert d is not None
        found = list(db.session.scalars(db.select(Event).order_by(Event.occurred_at, Event.id)))
        db.session.expunge_all()
        return d, found


def pending(app: Flask) -> int:
    with app.app_context():
        return tracking_buffer.pending()


# Machine rules (pure)


@pytest.mark.parametrize("ua", [
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
    "Mozilla/5.0",  # Apple Mail Privacy Protection's prefetch
    "",
    "Barracuda Sentinel (EE)",
    "Mozilla/5.0 (compatible; Mimecast URL Protect)",
    "Proofpoint URL Defense",
    "python-requests/2.32.3",
    "curl/8.5.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Microsoft Office Existence Discovery",
    "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
    "Outlook-iOS link preview",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
    "facebookexternalhit/1.1",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/120.0.0.0",
])
def test_proxy_scanner_and_preview_agents_are_machines(ua: str) -> None:
    assert machines.is_machine_agent(ua)


@pytest.mark.parametrize("ua", [
    BROWSER,
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:124.0) Gecko/20100101 Firefox/124.0",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)",
    "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 Chrome/120.0 "
    "Mobile Safari/537.36",
    "Thunderbird/115.9.0",
])
def test_mail_clients_and_browsers_are_people(ua: str) -> None:
    assert not machines.is_machine_agent(ua)


def test_an_open_within_the_window_after_sending_is_a_machine() -> None:
    sent = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
    assert machines.is_machine_open(BROWSER, sent + timedelta(seconds=3), sent, 10)
    assert machines.is_machine_open(BROWSER, sent - timedelta(seconds=1), sent, 10)
    assert not machines.is_machine_open(BROWSER, sent + timedelta(seconds=10), sent, 10)
    assert not machines.is_machine_open(BROWSER, sent + timedelta(seconds=3), sent, 0)
    assert not machines.is_machine_open(BROWSER, sent, None, 10)  # never sent: no window


def test_a_click_is_a_machine_for_the_canary_or_a_machine_agent_only() -> None:
    assert machines.is_machine_click(BROWSER, canary=True)
    assert machines.is_machine_click("Proofpoint URL Defense", canary=False)
    assert not machines.is_machine_click(BROWSER, canary=False)


# Machine opens and clicks, end to end


def test_an_open_right_after_sending_is_flagged_and_not_a_human_open(
    app: Flask, client: FlaskClient
) -> None:
    d1 = add_delivery(app, sent_ago=timedelta(seconds=2))
    pixel(app, client, d1)
    flush(app)
    d, [event] = state(app, d1)
    assert event.kind == EventKind.OPEN and event.machine
    assert d.opened_at is not None and d.open_count == 1
    assert d.human_opened_at is None


def test_an_open_by_a_reader_later_is_the_first_human_open(
    app: Flask, client: FlaskClient
) -> None:
    d1 = add_delivery(app)
    pixel(app, client, d1, ua="Mozilla/5.0")  # Apple's proxy first
    time.sleep(0.01)
    pixel(app, client, d1)
    flush(app)
    d, events = state(app, d1)
    assert [e.machine for e in events] == [True, False]
    assert d.open_count == 2 and d.opened_at == events[0].occurred_at
    assert d.human_opened_at == events[1].occurred_at


@pytest.mark.parametrize("ua", ["Barracuda Sentinel (EE)", "python-requests/2.32.3"])
def test_a_scanner_click_is_flagged_and_is_not_a_click_or_human_open(
    app: Flask, client: FlaskClient, ua: str
) -> None:
    d1 = add_delivery(app)
    res = click(app, client, d1, ua=ua)
    assert res.status_code == 302 and res.headers["Location"] == URL  # it still goes there
    flush(app)
    d, [event] = state(app, d1)
    assert event.kind == EventKind.CLICK and event.machine and event.url == URL
    assert d.clicked_at is None and d.human_opened_at is None
    assert d.opened_at is not None  # an open of some kind did happen


def test_a_click_by_a_person_counts_as_a_human_open(app: Flask, client: FlaskClient) -> None:
    d1 = add_delivery(app)
    pixel(app, client, d1, ua="Mozilla/5.0 (via ggpht.com GoogleImageProxy)")
    time.sleep(0.01)
    click(app, client, d1)
    flush(app)
    d, [open_, click_] = state(app, d1)
    assert open_.machine and not click_.machine
    assert d.clicked_at == click_.occurred_at == d.human_opened_at
    assert d.opened_at == open_.occurred_at


def send_first_lesson(app: Flask, outbox: list[Any]) -> tuple[str, str, int]:
    with app.app_context():
        sub = Subscriber(email="reader@example.com", name="Ada", timezone="UTC",
                         status=Status.ACTIVE, next_position=1, next_send_at=utcnow())
        db.session.add(sub)
        db.session.commit()
        pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
        delivery_id = db.session.scalar(db.select(Delivery.id))
    [msg] = outbox
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    return html, text, delivery_id


def test_the_hidden_canary_link_records_a_machine_click_and_leads_to_the_lesson(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    html, text, d1 = send_first_lesson(app, outbox)
    m = re.search(r'<div style="display:none[^"]*"[^>]*><a href="http://localhost(/c/[^"]+)"',
                  html)
    assert m, "the lesson email has no hidden canary link"
    canary = m.group(1)
    assert canary not in text  # people reading the text part never see it
    with app.app_context():
        link, recipient = canary.removeprefix("/c/").split("/")
        lesson_key = tokens.read("click", recipient)["l"]
        assert tokens.read("click", recipient) == {"d": d1, "l": lesson_key}
        assert tokens.read("link", link) == {"k": 1, "l": lesson_key, "u": ""}
    res = client.get(canary, headers={"User-Agent": BROWSER})
    assert res.status_code == 302 and res.headers["Location"].startswith("/l/")
    assert "When your cheerleaders go quiet" in client.get(res.headers["Location"]).get_data(
        as_text=True)
    flush(app)
    d, [event] = state(app, d1)
    assert (event.kind, event.machine, event.url) == (EventKind.CLICK, True, None)
    assert d.clicked_at is None and d.human_opened_at is None


# Buffered hits are never lost or doubled


def hits(app: Flask, client: FlaskClient, d1: int) -> None:
    """Five hits: three opens, two clicks."""
    for _ in range(3):
        pixel(app, client, d1)
    for _ in range(2):
        assert click(app, client, d1).status_code == 302


def assert_landed_once(app: Flask, d1: int) -> None:
    d, events = state(app, d1)
    assert sorted(e.kind for e in events) == ["click", "click", "open", "open", "open"]
    assert (d.open_count, d.click_count) == (3, 2)
    assert d.human_opened_at == events[0].occurred_at and d.clicked_at is not None
    assert pending(app) == 0


def test_the_endpoints_only_buffer_and_the_flush_stores(app: Flask, client: FlaskClient) -> None:
    d1 = add_delivery(app)
    hits(app, client, d1)
    assert pending(app) == 5
    assert state(app, d1)[1] == []
    assert flush(app) == 5
    assert_landed_once(app, d1)
    assert flush(app) == 0


def test_hits_survive_a_flush_whose_database_is_unreachable(
    make_app: Any, db_backend: str
) -> None:
    app = make_app()
    client = app.test_client()
    d1 = add_delivery(app)
    hits(app, client, d1)
    broken = make_app(SQLALCHEMY_DATABASE_URI=f"postgresql+psycopg://postgres@127.0.0.1:"
                                              f"{closed_port()}/nowhere")
    with broken.app_context(), pytest.raises(SQLAlchemyError):
        tracking_buffer.flush()
    assert pending(app) == 5
    assert state(app, d1)[1] == []
    assert flush(app) == 5
    assert_landed_once(app, d1)


@contextmanager
def refusing_delivery_updates(app: Flask) -> Iterator[None]:
    """A trigger that makes every UPDATE of a delivery fail, inside the flush's transaction."""
    with app.app_context():
        postgres = db.engine.dialect.name == "postgresql"
        with db.engine.begin() as c:
            if postgres:
                c.execute(sa.text(
                    "CREATE FUNCTION mc_test_refuse() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql"))
                c.execute(sa.text(
                    "CREATE TRIGGER mc_test_refuse BEFORE UPDATE ON delivery FOR EACH ROW "
                    "EXECUTE FUNCTION mc_test_refuse()"))
            else:
                c.execute(sa.text(
                    "CREATE TRIGGER mc_test_refuse BEFORE UPDATE ON delivery "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    try:
        yield
    finally:
        with app.app_context(), db.engine.begin() as c:
            c.execute(sa.text("DROP TRIGGER mc_test_refuse" + (" ON delivery" if postgres
                                                                 else "")))
            if postgres:
                c.execute(sa.text("DROP FUNCTION mc_test_refuse()"))


def test_a_flush_that_fails_halfway_stores_nothing_and_keeps_every_hit(
    app: Flask, client: FlaskClient
) -> None:
    d1 = add_delivery(app)
    hits(app, client, d1)
    with refusing_delivery_updates(app):
        with app.app_context(), pytest.raises(SQLAlchemyError):
            tracking_buffer.flush()
        # The events were inserted before the update failed: all rolled back together.
        assert state(app, d1)[1] == []
        assert pending(app) == 5
    assert flush(app) == 5
    assert_landed_once(app, d1)


def test_a_batch_stored_twice_counts_once(app: Flask, client: FlaskClient) -> None:
    """A crash after the commit and before the trim: the next flush replays the batch."""
    d1 = add_delivery(app)
    hits(app, client, d1)
    with app.app_context():
        from course.queue import redis_connection

        conn = redis_connection()
        conn.rename(tracking_buffer.INBOX, tracking_buffer.PROCESSING)  # as flush does
        batch = [tracking_buffer.Hit.decode(r) for r in conn.lrange(
            tracking_buffer.PROCESSING, 0, -1)]
        assert tracking_buffer.store([h for h in batch if h]) == 5  # committed, not trimmed
        assert tracking_buffer.flush() == 0  # the replay adds nothing
    assert_landed_once(app, d1)


def test_an_unreadable_record_is_dropped_without_blocking_the_others(
    app: Flask, client: FlaskClient
) -> None:
    d1 = add_delivery(app)
    pixel(app, client, d1)
    with app.app_context():
        from course.queue import redis_connection

        redis_connection().rpush(tracking_buffer.INBOX, b"not json", b'["open","x",1,"",""]')
    pixel(app, client, d1)
    assert flush(app) == 2
    assert pending(app) == 0
    assert state(app, d1)[0].open_count == 2


def test_only_one_flush_runs_at_a_time(app: Flask, client: FlaskClient) -> None:
    d1 = add_delivery(app)
    pixel(app, client, d1)
    with app.app_context():
        from course.queue import redis_connection

        redis_connection().set(tracking_buffer.LOCK, "someone else", ex=60)
        assert tracking_buffer.flush() == 0
        redis_connection().delete(tracking_buffer.LOCK)
    assert flush(app) == 1


# Redis down at hit time


def test_with_redis_down_the_pixel_still_answers_and_the_hit_goes_straight_to_the_database(
    make_app: Any
) -> None:
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    client = app.test_client()
    d1 = add_delivery(app)
    started = time.monotonic()
    pixel(app, client, d1)
    pixel(app, client, d1)
    assert click(app, client, d1).headers["Location"] == URL
    assert time.monotonic() - started < 3
    d, events = state(app, d1)  # no flush: written at hit time
    assert [e.kind for e in events] == ["open", "open", "click"]
    assert (d.open_count, d.click_count) == (2, 1) and d.human_opened_at is not None


def test_a_hit_redis_refuses_is_written_to_the_database_after_the_answer(
    app: Flask, client: FlaskClient
) -> None:
    """The reply to the RPUSH is read once the response has gone out; a refusal (here a
    WRONGTYPE error, as a full Redis would answer OOM) sends the hit to the database."""
    d1 = add_delivery(app)
    with app.app_context():
        from course.queue import redis_connection

        redis_connection().set(tracking_buffer.INBOX, "not a list")
        url = f"/o/{tokens.make('open', {'d': d1})}.gif"
    res = client.get(url, headers={"User-Agent": BROWSER}, buffered=True)  # closes it
    assert res.status_code == 200 and res.mimetype == "image/gif"
    d, [event] = state(app, d1)  # stored without any flush
    assert event.kind == EventKind.OPEN and d.open_count == 1
    with app.app_context():
        redis_connection().delete(tracking_buffer.INBOX)
    pixel(app, client, d1)  # Redis takes the next one again
    assert pending(app) == 1 and flush(app) == 1


def test_with_redis_and_the_database_down_the_pixel_and_click_still_answer(
    make_app: Any
) -> None:
    make_app()  # the first app cleans the test database; this one has none to clean
    app = make_app(REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0",
                   SQLALCHEMY_DATABASE_URI=f"postgresql+psycopg://postgres@127.0.0.1:"
                                           f"{closed_port()}/nowhere")
    client = app.test_client()
    with app.app_context():
        open_url = f"/o/{tokens.make('open', {'d': 1})}.gif"
        click_url = f"/c/{tokens.make('click', {'d': 1, 'u': URL})}"
    res = client.get(open_url)
    assert res.status_code == 200 and res.get_data().startswith(b"GIF89a")
    res = client.get(click_url)
    assert res.status_code == 302 and res.headers["Location"] == URL


def test_healthz_answers_ok(client: FlaskClient) -> None:
    res = client.get("/healthz")
    assert res.status_code == 200 and res.get_data() == b"ok"
    assert "Set-Cookie" not in res.headers


def test_the_pixel_sets_no_cookie(app: Flask, client: FlaskClient) -> None:
    d1 = add_delivery(app)
    with app.app_context():
        url = f"/o/{tokens.make('open', {'d': d1})}.gif"
    assert "Set-Cookie" not in client.get(url).headers


# Outgoing webhooks


def webhooks(app: Flask) -> list[tuple[str, dict[str, Any]]]:
    with app.app_context():
        rows = db.session.scalars(db.select(OutgoingWebhook).order_by(OutgoingWebhook.id))
        return [(w.kind, json.loads(w.payload)["data"]) for w in rows]


def test_the_first_human_open_is_announced_once(make_app: Any) -> None:
    app = make_app(WEBHOOK_URLS=("https://hooks.example.org/in",), WEBHOOK_SECRET="s" * 32)
    client = app.test_client()
    d1 = add_delivery(app)
    pixel(app, client, d1, ua="Mozilla/5.0")  # a machine: nothing to announce
    flush(app)
    assert webhooks(app) == []
    pixel(app, client, d1)
    click(app, client, d1)
    flush(app)
    pixel(app, client, d1)
    flush(app)
    [(kind, data)] = webhooks(app)
    _, events = state(app, d1)
    assert kind == "lesson.opened"
    assert data["delivery_id"] == d1 and data["subscriber"]["email"] == "ann@example.com"
    assert data["lesson"] == {"slug": "lesson-1", "position": 1} and data["source"] == "pixel"
    assert data["at"] == events[1].occurred_at.strftime("%Y-%m-%dT%H:%M:%SZ")


# What the admin shows


def test_the_funnel_shows_people_and_machines_side_by_side(
    app: Flask, client: FlaskClient
) -> None:
    from course import tracking_stats
    from course.content import current_course

    with app.app_context():
        slugs = {lesson.position: lesson.slug for lesson in current_course().lessons}
        ids: dict[tuple[int, int], int] = {}
        for n in range(3):
            sub = Subscriber(email=f"r{n}@example.com", timezone="UTC", status=Status.ACTIVE,
                             completed_at=utcnow() if n == 0 else None)
            db.session.add(sub)
            db.session.flush()
            for position in (1, 2):
                d = Delivery(subscriber_id=sub.id, lesson_slug=slugs[position],
                             position=position, status=DeliveryStatus.SENT,
                             sent_at=utcnow() - timedelta(hours=1),
                             completed_at=utcnow() if n == 0 else None)
                db.session.add(d)
                db.session.flush()
                ids[(n, position)] = d.id
        db.session.commit()
    # Lesson 1: reader 0 opens and clicks; reader 1 only through Apple's proxy; reader 2's
    # scanner follows the canary and a link. Lesson 2: reader 0 opens twice.
    pixel(app, client, ids[(0, 1)])
    click(app, client, ids[(0, 1)])
    pixel(app, client, ids[(1, 1)], ua="Mozilla/5.0")
    with app.app_context():
        canary = f"/c/{tokens.make('click', {'d': ids[(2, 1)], 'u': '', 'k': 1})}"
    client.get(canary)
    click(app, client, ids[(2, 1)], ua="Mimecast URL Protect")
    pixel(app, client, ids[(0, 2)])
    pixel(app, client, ids[(0, 2)])
    flush(app)
    with app.app_context():
        funnel = tracking_stats.lesson_funnel()
        hits = tracking_stats.hits_per_lesson()
        totals = tracking_stats.funnel_totals(funnel)
        completions = tracking_stats.completions()
        reader0 = tracking_stats.hits_for_subscriber(
            db.session.get(Delivery, ids[(0, 1)]).subscriber_id)
    assert funnel == [
        tracking_stats.LessonFunnel(1, slugs[1], sent=3, opened=3, human_opened=1,
                                    machine_only=2, clicked=1, machine_clicked=1, done=1),
        tracking_stats.LessonFunnel(2, slugs[2], sent=3, opened=1, human_opened=1,
                                    machine_only=0, clicked=0, machine_clicked=0, done=1),
    ]
    assert funnel[0].rate("human_opened") == pytest.approx(1 / 3)
    assert (totals.sent, totals.opened, totals.human_opened, totals.done) == (6, 4, 2, 2)
    assert hits[1] == tracking_stats.HitCounts(human_opens=1, machine_opens=1,
                                               human_clicks=1, machine_clicks=2)
    assert hits[2] == tracking_stats.HitCounts(human_opens=2)
    assert reader0 == {ids[(0, 1)]: tracking_stats.HitCounts(1, 0, 1, 0),
                       ids[(0, 2)]: tracking_stats.HitCounts(2, 0, 0, 0)}
    assert completions == {"started": 3, "completed": 1}

    # The admin shows the same figures: people beside machines, per lesson and per delivery.
    from test_admin import EMAIL, PASSWORD, add_admin, post_login

    add_admin(app)
    admin = app.test_client()
    assert post_login(admin, EMAIL, PASSWORD).status_code == 302
    page = admin.get("/admin/lessons").get_data(as_text=True)

    def cell(html: str, row_id: str, name: str) -> str:
        row = re.search(rf'<tr id="{row_id}">(.*?)</tr>', html, re.S)
        assert row, row_id
        found = re.search(rf'class="num {name}">\s*(\d+)', row.group(1))
        assert found, (row_id, name)
        return found.group(1)

    lesson1 = {name: cell(page, "lesson-1", name) for name in (
        "sent", "human-opened", "machine-only", "clicked", "machine-clicked", "done",
        "hits-human-opens", "hits-machine-opens", "hits-human-clicks", "hits-machine-clicks")}
    assert lesson1 == {"sent": "3", "human-opened": "1", "machine-only": "2", "clicked": "1",
                       "machine-clicked": "1", "done": "1", "hits-human-opens": "1",
                       "hits-machine-opens": "1", "hits-human-clicks": "1",
                       "hits-machine-clicks": "2"}
    assert cell(page, "lesson-2", "hits-human-opens") == "2"
    assert cell(page, "lesson-3", "sent") == "0"  # a lesson nobody got yet still has a row
    assert re.search(r'class="completion-rate">33%<', page)
    with app.app_context():
        reader0_id = db.session.get(Delivery, ids[(0, 1)]).subscriber_id
        reader1_id = db.session.get(Delivery, ids[(1, 1)]).subscriber_id
    page0 = admin.get(f"/admin/subscribers/{reader0_id}").get_data(as_text=True)
    assert "every lesson done" in page0
    assert "2 by people, 0 by machines" in page0  # lesson 2's two opens
    page1 = admin.get(f"/admin/subscribers/{reader1_id}").get_data(as_text=True)
    assert "machines only" in page1 and "0 by people, 1 by machines" in page1
    assert "every lesson done" not in page1


def test_the_flush_job_runs_on_a_real_worker(app: Flask, client: FlaskClient) -> None:
    from conftest import run_jobs

    from course import queue

    d1 = add_delivery(app)
    hits(app, client, d1)
    with app.app_context():
        queue.enqueue("workers.tasks.flush_tracking", queue_name=queue.TICK_QUEUE)
    run_jobs(app)
    assert_landed_once(app, d1)


# The fast path in front of Flask


SECURITY = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy",
            "X-Frame-Options", "Strict-Transport-Security")


@pytest.mark.parametrize("base_url", ["http://localhost", "https://course.example.org"])
def test_the_fast_path_sends_the_same_security_headers_as_flask(
    make_app: Any, base_url: str
) -> None:
    from course.tracking_fast import FastPath

    app = make_app(BASE_URL=base_url)
    assert isinstance(app.wsgi_app, FastPath)
    client = app.test_client()
    d1 = add_delivery(app)
    with app.app_context():
        open_url = f"/o/{tokens.make('open', {'d': d1})}.gif"
        click_url = f"/c/{tokens.make('click', {'d': d1, 'u': URL})}"
    flask_headers = client.get("/healthz").headers
    for res in (client.get(open_url), client.get(click_url)):
        assert {h: res.headers.get(h) for h in SECURITY} == {
            h: flask_headers.get(h) for h in SECURITY}
    assert ("Strict-Transport-Security" in flask_headers) == base_url.startswith("https")


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "flask-views"])
def test_the_fast_path_and_the_views_answer_and_record_alike(make_app: Any, fast: bool) -> None:
    app = make_app(TRACKING_FAST_PATH=fast)
    client = app.test_client()
    d1 = add_delivery(app)
    with app.app_context():
        canary = f"/c/{tokens.make('click', {'d': d1, 'u': '', 'k': 1})}"
        unicode_url = "https://example.org/café"
    res = client.get(canary, headers={"User-Agent": BROWSER})
    assert res.status_code == 302 and res.headers["Location"].startswith("/l/")
    assert res.headers["Cache-Control"] == "no-store"
    res = click(app, client, d1, url=unicode_url)  # never on the fast path: the view
    assert res.status_code == 302 and res.headers["Location"] == "https://example.org/caf%C3%A9"
    res = click(app, client, d1)
    assert res.status_code == 302 and res.headers["Location"] == URL
    pixel(app, client, d1)
    flush(app)
    d, events = state(app, d1)
    assert [(e.kind, e.machine, e.url) for e in events] == [
        ("click", True, None), ("click", False, unicode_url), ("click", False, URL),
        ("open", False, None)]
    assert (d.open_count, d.click_count) == (2, 3)
