"""The admin's figures: one definition each, the same on every page, and where each lesson
loses people.

"Opened" is opened by a person: a person's open, a person's click, or the lesson marked
done; machine opens never count. The subscribers list, a subscriber's page, the
dashboard, the Lessons page and the CSV export must all agree, and each shows the legend.
The Lessons page also shows, per lesson, who left after it, who stalled at it, who has
not reached it yet (apart from those who dropped off before it), and clicks per link.
"""

from __future__ import annotations

import csv
import html as html_lib
import io
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import EMAIL, PASSWORD, add_admin, csrf_from, post_login, run_jobs
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue

from course import ConfigError, dropoff_stats, tokens, tracking_buffer, tracking_stats
from course.admin import dashboard
from course.admin.dashboard import figure_meaning
from course.config import load
from course.content import current_course
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Event, EventKind, Status, Subscriber
from course.queue import TICK_QUEUE
from course.timeutil import utcnow
from tests.helpers import copy_shipped_course

BROWSER = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
           "(KHTML, like Gecko)")
APPLE_PROXY = "Mozilla/5.0"  # Apple Mail Privacy Protection's prefetch: a machine
SCANNER = "Mozilla/5.0 (compatible; Mimecast URL Protect)"
GUIDE = "https://example.org/guide"
OTHER = "https://example.org/other"


def signed_in(app: Flask) -> FlaskClient:
    add_admin(app)
    client = app.test_client()
    assert post_login(client, EMAIL, PASSWORD).status_code == 302
    return client


def get(client: FlaskClient, url: str) -> str:
    res = client.get(url)
    assert res.status_code == 200, url
    return res.get_data(as_text=True)


def cell(html: str, row_id: str, name: str) -> str:
    """The number in ``<td class="num NAME">`` of the row ``row_id``."""
    row = re.search(rf'<tr id="{row_id}">(.*?)</tr>', html, re.S)
    assert row, row_id
    found = re.search(rf'class="num {name}">\s*(\d+)', row.group(1))
    assert found, (row_id, name)
    return found.group(1)


def meaning(name: str) -> str:
    return html_lib.escape(figure_meaning(name)[1], quote=False)


def ago(days: float) -> datetime:
    return utcnow() - timedelta(days=days)


# --- "opened" has one definition, on every page ------------------------------------------


def pixel(app: Flask, client: FlaskClient, delivery_id: int, ua: str) -> None:
    with app.app_context():
        url = f"/o/{tokens.make('open', {'d': delivery_id})}.gif"
    assert client.get(url, headers={"User-Agent": ua}).status_code == 200


def click(app: Flask, client: FlaskClient, delivery_id: int, url: str, ua: str = BROWSER,
          canary: bool = False) -> None:
    payload: dict[str, Any] = {"d": delivery_id, "u": "" if canary else url}
    if canary:
        payload["k"] = 1
    with app.app_context():
        link = f"/c/{tokens.make('click', payload)}"
    assert client.get(link, headers={"User-Agent": ua}).status_code in (200, 302)


def mark_done(app: Flask, client: FlaskClient, delivery_id: int) -> None:
    with app.app_context():
        url = f"/done/{tokens.make('complete', {'d': delivery_id})}"
    page = get(client, url)
    token = csrf_from(page if "csrf_token" in page else get(client, "/"))
    res = client.post(url, data={"csrf_token": token})
    assert res.status_code == 200


def sent_lessons(app: Flask, email: str, positions: list[int], *, status: str = Status.ACTIVE,
                 sent_days_ago: float = 1 / 24, next_position: int | None = None,
                 **per_lesson: dict[str, Any]) -> tuple[int, dict[int, int]]:
    """A subscriber sent ``positions`` (an hour ago by default); returns their id and their
    delivery ids by position. ``per_lesson["p2"]`` sets fields of lesson 2's delivery."""
    with app.app_context():
        slugs = {lesson.position: lesson.slug for lesson in current_course().lessons}
        sub = Subscriber(email=email, timezone="UTC", status=status, confirmed_at=ago(90),
                         next_position=next_position or max(positions, default=0) + 1)
        db.session.add(sub)
        db.session.flush()
        ids = {}
        for position in positions:
            fields = {"sent_at": ago(sent_days_ago), **per_lesson.get(f"p{position}", {})}
            d = Delivery(subscriber_id=sub.id, lesson_slug=slugs[position], position=position,
                         status=DeliveryStatus.SENT, **fields)
            db.session.add(d)
            db.session.flush()
            ids[position] = d.id
        db.session.commit()
        return sub.id, ids


def test_opened_means_by_a_person_or_done_on_every_page_and_in_the_export(app, client):
    """A machine open is not "opened"; a person's click and "Mark done" are; and the list,
    the subscriber's page, the dashboard, the Lessons page and the CSV export agree."""
    sub_id, d = sent_lessons(app, "ann@example.com", [1, 2, 3, 4])
    pixel(app, client, d[1], APPLE_PROXY)  # lesson 1: only Apple's proxy loaded the pixel
    mark_done(app, client, d[2])  # lesson 2: marked done, never seen to open
    click(app, client, d[3], GUIDE)  # lesson 3: a person clicked (images blocked)
    pixel(app, client, d[4], BROWSER)  # lesson 4: a person opened it
    with app.app_context():
        tracking_buffer.flush()
        stored = {p: db.session.get(Delivery, i) for p, i in d.items()}
        assert stored[1].opened_at is not None and stored[1].human_opened_at is None
        assert stored[2].human_opened_at is None and stored[2].completed_at is not None
    admin = signed_in(app)

    listing = get(admin, "/admin/subscribers")
    row = listing[listing.index(f'href="/admin/subscribers/{sub_id}"'):]
    row = row[:row.index("</tr>")]
    assert [re.search(rf'class="num {k}">(\d+)<', row).group(1)
            for k in ("sent", "opened", "done")] == ["4", "3", "1"]

    page = get(admin, f"/admin/subscribers/{sub_id}")
    counts = dict(re.findall(r'<dd class="count-(\w+)">(\d+)</dd>', page))
    assert counts == {"sent": "4", "opened": "3", "clicked": "1", "done": "1"}
    lesson_rows = {p: re.search(rf'<tr id="lesson-{p}">(.*?)</tr>', page, re.S).group(1)
                   for p in (1, 2, 3, 4)}
    assert "machines only" in lesson_rows[1]
    assert "(marked done)" in lesson_rows[2] and "machines only" not in lesson_rows[2]
    assert "(marked done)" not in lesson_rows[3] + lesson_rows[4]

    board = get(admin, "/admin/dashboard")
    opened = [int(cell(board, f"funnel-{p}", "human-opened")) for p in (1, 2, 3, 4)]
    assert opened == [0, 1, 1, 1]

    lessons = get(admin, "/admin/lessons")
    assert [int(cell(lessons, f"lesson-{p}", "human-opened")) for p in (1, 2, 3, 4)] == opened
    assert [int(cell(lessons, f"lesson-{p}", "machine-only")) for p in (1, 2, 3, 4)] == [
        1, 0, 0, 0]
    assert sum(opened) == int(counts["opened"])

    export = admin.post("/admin/export", data={"csrf_token": csrf_from(
        get(admin, "/admin/export"))})
    rows = list(csv.DictReader(io.StringIO(export.get_data(as_text=True).lstrip("\ufeff"))))
    assert [(r["lessons_sent"], r["lessons_opened"], r["lessons_clicked"], r["lessons_done"])
            for r in rows] == [("4", "3", "1", "1")]

    # Every page says what "opened" means, in the same words.
    for text in (listing, page, board, lessons, get(admin, "/admin/export")):
        assert meaning("opened") in text
    for text in (listing, page, board, lessons):
        assert '<dl class="legend">' in text


def test_the_sql_and_the_python_definitions_agree(app):
    t = utcnow()
    cases = [  # (human_opened_at, completed_at, opened_at) -> opened by a person?
        ((None, None, None), False),
        ((None, None, t), False),  # a machine's open only
        ((t, None, t), True),
        ((None, t, None), True),  # done without any open seen
        ((t, t, t), True),
    ]
    positions = list(range(1, len(cases) + 1))
    fields = {f"p{p}": dict(human_opened_at=h, completed_at=c, opened_at=o)
              for p, ((h, c, o), _) in zip(positions, cases, strict=True)}
    _, ids = sent_lessons(app, "cases@example.com", positions, **fields)
    with app.app_context():
        in_sql = set(db.session.scalars(
            db.select(Delivery.position).where(tracking_stats.opened_by_person())))
        for position, ((h, c, _), expected) in zip(positions, cases, strict=True):
            assert (position in in_sql) is expected
            assert (tracking_stats.opened_by_person_at(h, c) is not None) is expected
    assert tracking_stats.opened_by_person_at(t, t - timedelta(hours=1)) == t - timedelta(
        hours=1)


# --- which lesson loses people ---------------------------------------------------------------


def seed_losses(app: Flask) -> dict[str, int]:
    """Subscribers in every situation the loss figures tell apart (see each comment)."""
    people = {}
    # Left: unsubscribed after lesson 2; unsubscribed before any lesson; bounced after 1;
    # complained after 3.
    people["u1"], _ = sent_lessons(app, "u1@example.com", [1, 2], status=Status.UNSUBSCRIBED,
                                   sent_days_ago=20)
    people["u2"], _ = sent_lessons(app, "u2@example.com", [], status=Status.UNSUBSCRIBED,
                                   next_position=1)
    people["b1"], _ = sent_lessons(app, "b1@example.com", [1], status=Status.BOUNCED)
    people["c1"], _ = sent_lessons(app, "c1@example.com", [1, 2, 3], status=Status.COMPLAINED)
    # Stalled at 1: lessons 1 and 2 long ago, nothing opened.
    people["s1"], _ = sent_lessons(app, "s1@example.com", [1, 2], sent_days_ago=20,
                                   p2={"sent_at": ago(10)})
    # Stalled at 2 (for 7 days): lesson 1 done 19 days ago, lesson 2 ignored since day 10.
    people["s2"], _ = sent_lessons(app, "s2@example.com", [1, 2], sent_days_ago=20,
                                   p1={"completed_at": ago(19)}, p2={"sent_at": ago(10)})
    # Not stalled: opened lesson 1 late, two days ago (active within the last 7 days).
    people["s3"], _ = sent_lessons(app, "s3@example.com", [1, 2, 3], sent_days_ago=20,
                                   p1={"human_opened_at": ago(2)}, p2={"sent_at": ago(10)},
                                   p3={"sent_at": ago(1)})
    # Not stalled: their only lesson reached them three days ago.
    people["s4"], _ = sent_lessons(app, "s4@example.com", [1], sent_days_ago=3)
    # Not stalled: finished, every lesson done.
    people["s5"], _ = sent_lessons(app, "s5@example.com", [1, 2, 3], status=Status.FINISHED,
                                   sent_days_ago=60,
                                   **{f"p{p}": {"completed_at": ago(59)} for p in (1, 2, 3)})
    # Stalled at 1 although paused: only a machine ever opened lesson 1, 30 days ago.
    people["s6"], _ = sent_lessons(app, "s6@example.com", [1], status=Status.PAUSED,
                                   sent_days_ago=30, p1={"opened_at": ago(30)})
    # Stalled at 2: finished, but read only lesson 1, long ago.
    people["s7"], _ = sent_lessons(app, "s7@example.com", [1, 2, 3], status=Status.FINISHED,
                                   sent_days_ago=60, p1={"human_opened_at": ago(59)},
                                   p2={"sent_at": ago(50)}, p3={"sent_at": ago(40)})
    # Not in the course yet: pending (never counted), and active with nothing sent yet.
    people["p1"], _ = sent_lessons(app, "p1@example.com", [], status=Status.PENDING,
                                   next_position=1)
    people["a1"], _ = sent_lessons(app, "a1@example.com", [], next_position=1)
    return people


EXPECTED_7_DAYS = {  # position: (not reached, dropped before, stalled, unsubscribed, other)
    1: (1, 1, 2, 0, 1),  # a1 | u2 | s1, s6 | - | b1
    2: (3, 2, 2, 1, 0),  # + s4, s6 | + b1 | s2, s7 | u1
    3: (5, 3, 0, 0, 1),  # + s1, s2 | + u1 | | | c1
    4: (6, 4, 0, 0, 0),  # + s3 | + c1
    5: (6, 4, 0, 0, 0),
}


def loss_tuple(row: dropoff_stats.LessonLoss) -> tuple[int, ...]:
    return (row.not_reached, row.dropped_before, row.stalled, row.unsubscribed,
            row.left_otherwise)


def test_lesson_loss_tells_left_stalled_not_reached_and_dropped_apart(app):
    seed_losses(app)
    with app.app_context():
        figures = dropoff_stats.lesson_loss(utcnow(), days=7, length=current_course().length)
    assert figures["days"] == 7
    assert figures["left_before_any"] == {"unsubscribed": 1, "bounced": 0, "complained": 0}
    rows = {row["position"]: dropoff_stats.LessonLoss(**row) for row in figures["lessons"]}
    assert {p: loss_tuple(rows[p]) for p in EXPECTED_7_DAYS} == EXPECTED_7_DAYS
    assert rows[1].bounced == 1 and rows[3].complained == 1


def test_stalled_depends_on_the_number_of_days(app):
    seed_losses(app)
    with app.app_context():
        rows = {row["position"]: row["stalled"]
                for row in dropoff_stats.lesson_loss(utcnow(), days=15, length=3)["lessons"]}
    # s2's lesson 2 went out 10 days ago: not 15 yet. s1's lesson 1 did, 20 days ago.
    assert (rows[1], rows[2], rows[3]) == (2, 1, 0)


def test_the_lessons_page_shows_the_loss_figures_and_their_legend(make_app):
    app = make_app(ADMIN_STALLED_DAYS=7)
    seed_losses(app)
    admin = signed_in(app)
    page = get(admin, "/admin/lessons")
    # The tables are in the page once, in its body, never in its <title>.
    assert "<title>Lessons · Minicourse admin</title>" in page
    assert page.count('id="loss-title"') == 1
    names = ("not-reached", "dropped-before", "stalled", "unsubscribed", "left-otherwise")
    for position, expected in EXPECTED_7_DAYS.items():
        assert tuple(int(cell(page, f"loss-{position}", n)) for n in names) == expected
    assert int(cell(page, "loss-1", "reached")) == 10  # everyone sent lesson 1
    # The last lesson, which nobody reached: everyone still on the way counts.
    assert (cell(page, "loss-10", "not-reached"), cell(page, "loss-10", "reached")) == ("6", "0")
    assert "1 subscriber left before their first lesson" in page
    assert "silent for 7 days" in page
    for name in ("stalled", "not_reached", "dropped_before", "unsubscribed",
                 "left_otherwise", "opened", "clicked", "done"):
        assert meaning(name).replace("{days}", "7") in page.replace("&#39;", "'")
    assert "for 7 days" in html_lib.unescape(page[page.index('class="legend-stalled"'):])

    # Each lesson's own page shows its column of the same figures, and the legend.
    own = get(admin, "/admin/lessons/2")
    dd = dict(re.findall(r'<dd class="([a-z-]+)">(\d+)</dd>', own))
    assert tuple(int(dd[n]) for n in names) == EXPECTED_7_DAYS[2]
    assert "stalled at it (7 days)" in own and meaning("opened") in own


def test_the_stalled_days_setting_is_used_and_checked(make_app, tmp_path):
    app = make_app(ADMIN_STALLED_DAYS=15)
    seed_losses(app)
    page = get(signed_in(app), "/admin/lessons")
    assert (cell(page, "loss-1", "stalled"), cell(page, "loss-2", "stalled")) == ("2", "1")
    assert "silent for 15 days" in page
    assert load({}, tmp_path)["ADMIN_STALLED_DAYS"] == 7
    for bad in ("0", "-3", "366", "a week"):
        with pytest.raises(ConfigError) as info:
            load({"ADMIN_STALLED_DAYS": bad}, tmp_path)
        assert "ADMIN_STALLED_DAYS" in str(info.value) and "\n" not in str(info.value)


# --- clicks per link --------------------------------------------------------------------------


@pytest.fixture
def linked_app(make_app: Any, tmp_path: Path) -> Flask:
    """The course, with two links in lesson 1 (the shipped lessons have none)."""
    lessons = copy_shipped_course(tmp_path)
    first = lessons / "01-skeptics-in-your-corner.md"
    first.write_text(first.read_text() + f"\n\nRead [the guide]({GUIDE}) or "
                     f"[the other one]({OTHER}).\n")
    return make_app(LESSONS_DIR=str(lessons.parent))


def test_clicks_per_link_count_people_and_machines_apart(linked_app):
    app = linked_app
    client = app.test_client()
    _, a = sent_lessons(app, "a@example.com", [1, 2])
    _, b = sent_lessons(app, "b@example.com", [1])
    click(app, client, a[1], GUIDE)
    click(app, client, a[1], GUIDE)  # the same person twice: one person, two clicks
    click(app, client, a[1], GUIDE, ua=SCANNER)
    click(app, client, a[1], "", canary=True)
    click(app, client, b[1], GUIDE)
    click(app, client, a[2], "https://example.org/from-lesson-2")
    with app.app_context():
        tracking_buffer.flush()
        # SendGrid's copy of a click (its own click tracking) is not counted again.
        db.session.add(Event(subscriber_id=None, delivery_id=b[1], kind=EventKind.CLICK,
                             url=GUIDE, provider_event_id="sg:click:1"))
        db.session.commit()
        links = tracking_stats.clicks_per_link()
    assert links == [
        tracking_stats.LinkClicks(1, GUIDE, people=2, human_clicks=3, machine_clicks=1),
        tracking_stats.LinkClicks(1, "", people=0, human_clicks=0, machine_clicks=1),
        tracking_stats.LinkClicks(2, "https://example.org/from-lesson-2", 1, 1, 0),
    ]
    admin = signed_in(app)
    page = get(admin, "/admin/lessons")
    body = re.search(r'<tbody id="links-1">(.*?)</tbody>', page, re.S).group(1)
    shown = [(html_lib.unescape(re.sub(r"<[^>]+>", "", url)).strip(), int(p), int(h), int(m))
             for url, p, h, m in re.findall(
                 r'class="wrap link-url">(.*?)</td>\s*<td[^>]*link-people">(\d+)</td>\s*'
                 r'<td[^>]*link-human">(\d+)</td>\s*<td[^>]*link-machine">(\d+)</td>', body,
                 re.S)]
    assert shown[0] == (GUIDE, 2, 3, 1)
    assert shown[1][0].startswith("the hidden canary link") and shown[1][1:] == (0, 0, 1)
    assert shown[2] == (OTHER, 0, 0, 0)  # in the lesson, never clicked: still listed
    assert "No links in this lesson." in re.search(
        r'<tbody id="links-3">(.*?)</tbody>', page, re.S).group(1)
    own = get(admin, "/admin/lessons/1")  # the lesson's own page: the same figures
    urls = [html_lib.unescape(re.sub(r"<[^>]+>", "", u)).strip()
            for u in re.findall(r'class="wrap link-url">(.*?)</td>', own, re.S)]
    assert urls == [GUIDE, "the hidden canary link", OTHER]
    assert "No links in this lesson." in get(admin, "/admin/lessons/3")


# --- cached like the dashboard ----------------------------------------------------------------


def test_the_lessons_figures_are_cached_and_refreshed(app, redis_conn: Redis):
    sent_lessons(app, "first@example.com", [1], status=Status.UNSUBSCRIBED)
    admin = signed_in(app)
    page = get(admin, "/admin/lessons")
    assert cell(page, "loss-1", "unsubscribed") == "1"
    for name in dashboard.LESSON_FIGURES:
        assert redis_conn.ttl(dashboard.CACHE_PREFIX + name) > 0
    sent_lessons(app, "second@example.com", [1], status=Status.UNSUBSCRIBED)
    page = get(admin, "/admin/lessons")
    assert cell(page, "loss-1", "unsubscribed") == "1"  # the cached figure
    assert cell(page, "lesson-1", "sent") == "1"
    assert admin.post("/admin/lessons/refresh").status_code == 400  # no CSRF token
    res = admin.post("/admin/lessons/refresh", data={"csrf_token": csrf_from(page)})
    assert res.status_code == 302 and res.headers["Location"].endswith("/admin/lessons")
    page = get(admin, "/admin/lessons")
    assert cell(page, "loss-1", "unsubscribed") == "2" and "Figures refreshed." in page
    # The dashboard reads the same cached funnel, so the two pages agree.
    assert cell(get(admin, "/admin/dashboard"), "funnel-1", "sent") == "2"

    # Stale figures are shown while a background job recomputes them.
    old = utcnow() - timedelta(minutes=5)
    for name in dashboard.LESSON_FIGURES:
        key = dashboard.CACHE_PREFIX + name
        record = json.loads(redis_conn.get(key))
        record["at"] = old.timestamp()
        redis_conn.set(key, json.dumps(record), ex=60)
    sent_lessons(app, "third@example.com", [1], status=Status.UNSUBSCRIBED)
    page = get(admin, "/admin/lessons")
    assert cell(page, "loss-1", "unsubscribed") == "2"
    assert "fresh ones are being computed" in page
    assert Queue(TICK_QUEUE, connection=redis_conn).count == 1
    run_jobs(app)
    assert cell(get(admin, "/admin/lessons"), "loss-1", "unsubscribed") == "3"
    assert not redis_conn.exists(dashboard.REFRESH_LOCK)


def test_without_redis_the_lessons_page_computes_its_figures(make_app):
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    sent_lessons(app, "gone@example.com", [1, 2], status=Status.UNSUBSCRIBED)
    page = get(signed_in(app), "/admin/lessons")
    assert cell(page, "loss-2", "unsubscribed") == "1"
    assert "Redis is not answering" in page
