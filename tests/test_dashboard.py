"""The admin dashboard: figures, charts, pipeline health and the warnings drawn from them."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta

import pytest
from conftest import csrf_from, run_jobs
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue, Worker
from rq.registry import FailedJobRegistry
from test_admin import EMAIL, PASSWORD, add_admin, post_login

from course import health, sendstate
from course.admin import dashboard
from course.content import current_course
from course.extensions import db
from course.models import AppState, Delivery, DeliveryStatus, Event, EventKind, Status, Subscriber
from course.queue import MAIL_QUEUE, QUEUES, TICK_QUEUE, enqueue, redis_connection
from course.timeutil import utcnow
from course.tracking_stats import LessonFunnel

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)



def page(client: FlaskClient, url: str = "/admin/dashboard") -> str:
    res = client.get(url)
    assert res.status_code == 200
    return res.get_data(as_text=True)


def alert_keys(html: str) -> set[str]:
    return set(re.findall(r'<li class="alert-([a-z-]+)">', html))


def dd(html: str, css: str) -> str:
    found = re.search(rf'<dd class="{css}">(.*?)</dd>', html, re.S)
    assert found, f"no <dd class={css}>"
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def seed_sent(count: int, *, status: str = Status.ACTIVE, prefix: str = "s",
              sent_at: datetime | None = None) -> list[int]:
    """``count`` subscribers, each sent lesson 1 (at ``sent_at``, default now)."""
    lesson = current_course().lessons[0]
    subs = [Subscriber(email=f"{prefix}{i}@example.com", timezone="UTC", status=status)
            for i in range(count)]
    db.session.add_all(subs)
    db.session.flush()
    db.session.add_all([Delivery(subscriber_id=s.id, lesson_slug=lesson.slug, position=1,
                                 status=DeliveryStatus.SENT, sent_at=sent_at or utcnow())
                        for s in subs])
    db.session.commit()
    return [s.id for s in subs]


def add_events(kind: str, subscriber_ids: list[int], when: datetime | None = None) -> None:
    db.session.add_all([Event(subscriber_id=sid, kind=kind, occurred_at=when or utcnow(),
                              provider_event_id=f"sg:{kind}:{sid}") for sid in subscriber_ids])
    db.session.commit()


def healthy(**changes: object) -> health.PipelineHealth:
    base: dict[str, object] = dict(now=NOW, last_tick_at=NOW - timedelta(seconds=30),
                                   queued={MAIL_QUEUE: 0}, failed={MAIL_QUEUE: 0}, workers=1,
                                   hits_waiting=0)
    base.update(changes)
    return health.PipelineHealth(**base)  # type: ignore[arg-type]


# --- pure: warnings, days, charts ---------------------------------------------------------


@pytest.mark.parametrize("changes, rates, expected", [
    ({}, health.SendingRates(7, 100, 2, 0), set()),  # exactly 2% is not over the limit
    ({}, health.SendingRates(7, 100, 3, 0), {"bounce-rate"}),
    ({}, health.SendingRates(7, 1000, 0, 1), set()),  # exactly 0.1%
    ({}, health.SendingRates(7, 1000, 0, 2), {"complaint-rate"}),
    ({}, health.SendingRates(7, 0, 5, 5), set()),  # nothing sent: no rate to judge
    ({"last_tick_at": NOW - timedelta(seconds=179)}, None, set()),
    ({"last_tick_at": NOW - timedelta(seconds=181)}, None, {"tick-stale"}),
    ({"last_tick_at": None}, None, {"tick-stale"}),
    ({"paused": {"reason": "401 from SendGrid"}}, None, {"paused"}),
    ({"failed": {MAIL_QUEUE: 0, TICK_QUEUE: 2}}, None, {"failed-jobs"}),
    ({"workers": 0}, None, set()),  # no worker but nothing waiting: nothing lost yet
    ({"workers": 0, "queued": {MAIL_QUEUE: 4}}, None, {"no-workers"}),
    ({"redis_error": "Connection refused", "workers": None}, None, {"redis-down"}),
])
def test_warnings_follow_the_thresholds(changes, rates, expected):
    assert {a.key for a in health.warnings(healthy(**changes), rates)} == expected


def test_a_warning_says_the_figures_behind_it():
    [alert] = health.warnings(healthy(), health.SendingRates(7, 200, 10, 0))
    assert "5.0%" in alert.text and "10 bounces" in alert.text and "200 lessons" in alert.text
    [alert] = health.warnings(healthy(last_tick_at=NOW - timedelta(minutes=42)), None)
    assert "42 min ago" in alert.text


def test_days_without_signups_are_zero_and_today_is_last():
    days = dashboard.fill_days(date(2026, 2, 27), 4, {"2026-02-28": 3, "2026-03-02": 1})
    assert days == [("2026-02-27", 0), ("2026-02-28", 3), ("2026-03-01", 0), ("2026-03-02", 1)]


@pytest.mark.parametrize("value, top", [(0, 1), (1, 1), (3, 3), (7, 7), (10, 10), (11, 15),
                                        (24, 25), (26, 30), (480, 500), (501, 600),
                                        (9001, 10000)])
def test_the_axis_top_is_a_round_number_at_or_above_the_largest_bar(value, top):
    assert dashboard.nice_max(value) == top


def test_signup_chart_draws_a_bar_per_day_scaled_to_the_busiest():
    days = [("2026-06-01", 0), ("2026-06-02", 5), ("2026-06-03", 2)]
    chart = dashboard.signup_chart(days)
    assert len(chart.bars) == 3
    zero, five, two = chart.bars
    assert zero.height == 0 and five.height == pytest.approx(chart.bottom - chart.top)
    assert two.height == pytest.approx(five.height * 2 / 5, abs=0.01)
    assert five.y + five.height == pytest.approx(chart.bottom)
    assert all(b.x + b.width <= chart.width for b in chart.bars)
    assert five.title == "2026-06-02: 5 signups" and "1 signup" not in two.title
    assert [label for _, label, _ in chart.x_labels] == ["06-01", "06-02", "06-03"]
    assert [anchor for _, _, anchor in chart.x_labels] == ["start", "middle", "end"]


def test_funnel_chart_draws_four_bars_per_lesson_in_order():
    rows = [LessonFunnel(1, "a", sent=10, human_opened=6, clicked=3, done=2),
            LessonFunnel(2, "b", sent=4)]
    chart = dashboard.funnel_chart(rows)
    assert len(chart.bars) == 8
    heights = [b.height for b in chart.bars[:4]]
    assert heights == sorted(heights, reverse=True) and heights[0] == chart.bottom - chart.top
    assert chart.bars[5].height == 0 and chart.bars[4].title == "Lesson 2: 4 sent"
    xs = [b.x for b in chart.bars]
    assert xs == sorted(xs) and chart.bars[-1].x + chart.bars[-1].width <= chart.right
    assert [label for _, label, _ in chart.x_labels] == ["1", "2"]
    long = dashboard.funnel_chart([LessonFunnel(n, f"l{n}") for n in range(1, 31)])
    assert [label for _, label, _ in long.x_labels] == [str(n) for n in range(1, 31, 3)]


# --- the page ------------------------------------------------------------------------------


def test_the_dashboard_needs_a_signed_in_admin(client):
    for url in ("/admin/", "/admin/dashboard"):
        res = client.get(url)
        assert res.status_code == 302 and "/admin/login" in res.headers["Location"]
    assert client.post("/admin/dashboard/refresh").status_code in (302, 400)


def test_dashboard_is_the_first_page_and_first_in_the_nav(admin):
    html = page(admin, "/admin/")
    assert "<h1>Dashboard</h1>" in html
    assert "<h1>Dashboard</h1>" in page(admin, "/admin/dashboard")
    nav = html.split('<nav aria-label="Admin">')[1]
    first = re.search(r'<a href="([^"]+)"\s*(aria-current="page")?>([^<]+)</a>', nav)
    assert first and first.group(3) == "Dashboard" and first.group(2)
    assert 'class="brand" href="/admin/dashboard"' in html


def test_status_counts_signups_per_day_and_completion(app, admin):
    today = utcnow().replace(hour=0, minute=30, second=0, microsecond=0)
    with app.app_context():
        rows = [("a", Status.ACTIVE, today), ("b", Status.ACTIVE, today - timedelta(days=2)),
                ("c", Status.PENDING, today - timedelta(days=2)),
                ("d", Status.BOUNCED, today - timedelta(days=40)),  # outside the 30 days
                ("e", Status.FINISHED, today - timedelta(minutes=31))]  # yesterday, UTC
        db.session.add_all([Subscriber(email=f"{n}@example.com", timezone="Asia/Tokyo",
                                       status=s, created_at=t) for n, s, t in rows])
        db.session.commit()
        e = db.session.scalar(db.select(Subscriber).where(Subscriber.email == "e@example.com"))
        e.completed_at = utcnow()
        db.session.add(Delivery(subscriber_id=e.id, lesson_slug="x", position=1,
                                status=DeliveryStatus.SENT, sent_at=utcnow()))
        db.session.commit()
        days = dashboard.signups_per_day(utcnow())
        lessons = current_course().length
    assert len(days) == 30 and days[-1] == (today.date().isoformat(), 1)
    assert days[-2] == ((today - timedelta(days=1)).date().isoformat(), 1)
    assert days[-3] == ((today - timedelta(days=2)).date().isoformat(), 2)
    assert sum(n for _, n in days) == 4
    html = page(admin)
    assert re.search(r'count-active"><dt><a [^>]+>active</a></dt><dd>2</dd>', html)
    assert re.search(r'count-bounced"><dt><a [^>]+>bounced</a></dt><dd>1</dd>', html)
    assert html.count('<rect class="bar"') == 30 + 4 * lessons
    assert "4 signups from" in html
    assert f"<tr><th scope=\"row\">{today.date().isoformat()}</th><td class=\"num\">1</td>" in html
    assert dd(html, "started") == "1" and dd(html, "completed") == "1"
    assert dd(html, "completion-rate") == "100%"


def test_the_funnel_counts_people_not_machines(app, admin):
    with app.app_context():
        [sid] = seed_sent(1)
        d = db.session.scalar(db.select(Delivery).where(Delivery.subscriber_id == sid))
        d.opened_at = d.human_opened_at = d.clicked_at = d.completed_at = utcnow()
        [machine_only] = seed_sent(1, prefix="m")
        m = db.session.scalar(db.select(Delivery).where(Delivery.subscriber_id == machine_only))
        m.opened_at = utcnow()  # a privacy proxy's open: not a person
        db.session.commit()
    row = page(admin).split('<tr id="funnel-1">')[1].split("</tr>")[0]
    assert re.search(r'class="num sent">2<', row)
    assert re.search(r'class="num human-opened">1 <span class="hint">50%', row)
    assert re.search(r'class="num clicked">1 ', row) and re.search(r'class="num done">1 ', row)


def test_a_tick_run_by_a_worker_records_its_time(app, admin):
    html = page(admin)
    assert dd(html, "tick-age") == "never" and "tick-stale" in alert_keys(html)
    with app.app_context():
        enqueue("workers.tasks.tick", queue_name=TICK_QUEUE)
    before = utcnow()
    run_jobs(app)
    with app.app_context():
        ticked = health.last_tick_at()
        assert ticked is not None and before <= ticked <= utcnow()
    html = page(admin)
    assert re.fullmatch(r"\d+ s ago", dd(html, "tick-age"))
    assert "tick-stale" not in alert_keys(html)


def test_record_tick_keeps_one_row_with_the_latest_time(app):
    with app.app_context():
        health.record_tick(NOW)
        health.record_tick(NOW + timedelta(minutes=1))
        rows = db.session.scalars(db.select(AppState).where(AppState.key == "last_tick_at"))
        assert len(rows.all()) == 1
        assert health.last_tick_at() == NOW + timedelta(minutes=1)


def test_an_old_tick_is_a_warning(app, admin):
    with app.app_context():
        health.record_tick(utcnow() - timedelta(minutes=10))
    html = page(admin)
    assert "tick-stale" in alert_keys(html) and dd(html, "tick-age") == "10 min ago"
    assert 'role="alert"' in html


def test_failed_jobs_show_as_a_warning(app, admin):
    with app.app_context():
        health.record_tick()
        enqueue("course.health.no_such_job", retries=0)  # the worker cannot even import it
    run_jobs(app)
    with app.app_context():
        assert FailedJobRegistry(MAIL_QUEUE, connection=redis_connection()).count == 1
    html = page(admin)
    assert alert_keys(html) == {"failed-jobs"}
    assert dd(html, f"failed failed-{MAIL_QUEUE}") == "1"
    assert "1 job failed" in html


def test_queue_depth_and_live_workers(app, admin, redis_conn: Redis):
    with app.app_context():
        health.record_tick()
        for _ in range(3):
            enqueue("workers.tasks.flush_tracking")
        conn = redis_connection()
    html = page(admin)
    assert dd(html, f"queued queued-{MAIL_QUEUE}") == "3" and dd(html, "workers") == "0"
    assert "no-workers" in alert_keys(html)
    worker = Worker([Queue(name, connection=conn) for name in QUEUES], connection=conn)
    worker.register_birth()
    try:
        html = page(admin)
        assert dd(html, "workers") == "1" and "no-workers" not in alert_keys(html)
    finally:
        worker.register_death()
    # A worker killed without unregistering stays in RQ's set; its own key expires.
    worker = Worker([Queue(name, connection=conn) for name in QUEUES], connection=conn)
    worker.register_birth()
    conn.delete(worker.key)
    assert dd(page(admin), "workers") == "0"


def test_paused_sending_shows(app, admin):
    with app.app_context():
        health.record_tick()
        sendstate.pause("SendGrid refused the API key (401)")
    html = page(admin)
    assert "paused" in alert_keys(html) and dd(html, "sending-state") == "paused"
    with app.app_context():
        sendstate.resume()
    html = page(admin)
    assert alert_keys(html) == set() and dd(html, "sending-state") == "running"
    assert 'class="notice all-clear"' in html


@pytest.mark.parametrize("bounced, warned", [(3, True), (2, False)])
def test_bounces_over_two_percent_of_lessons_sent_this_week_warn(app, admin, bounced, warned):
    with app.app_context():
        health.record_tick()
        seed_sent(100 - bounced)
        ids = seed_sent(bounced, status=Status.BOUNCED, prefix="b")
        add_events(EventKind.BOUNCE, ids)
        # Last month's bounces and sends are outside the window.
        old = seed_sent(5, status=Status.BOUNCED, prefix="old",
                        sent_at=utcnow() - timedelta(days=30))
        add_events(EventKind.BOUNCE, old, utcnow() - timedelta(days=30))
    html = page(admin)
    assert ("bounce-rate" in alert_keys(html)) is warned
    assert dd(html, "sent-window") == "100"
    assert dd(html, "bounce-rate") == f"{bounced:.1f}%"


def test_complaints_over_a_tenth_of_a_percent_warn(app, admin):
    with app.app_context():
        health.record_tick()
        ids = seed_sent(500)
        add_events(EventKind.SPAM_REPORT, ids[:1])
        add_events(EventKind.BLOCKED, ids[1:50])  # temporary: not a bounce
        rates = health.sending_rates()
    assert (rates.sent, rates.bounced, rates.complained) == (500, 0, 1)
    html = page(admin)
    assert alert_keys(html) == {"complaint-rate"} and dd(html, "complaint-rate") == "0.20%"


# --- the cache -----------------------------------------------------------------------------


def active_count(html: str) -> str:
    found = re.search(r'count-active"><dt><a [^>]+>active</a></dt><dd>(\d+)</dd>', html)
    assert found
    return found.group(1)


def test_figures_are_cached_and_refresh_now_recomputes_them(app, admin, redis_conn: Redis):
    with app.app_context():
        seed_sent(1)
    html = page(admin)
    assert active_count(html) == "1" and "Figures as of" in html
    for name in dashboard.FIGURES:
        assert redis_conn.ttl(dashboard.CACHE_PREFIX + name) > 0
    with app.app_context():
        seed_sent(2, prefix="late")
    html = page(admin)
    assert active_count(html) == "1"  # still the cached figure, said to be as of earlier
    assert admin.post("/admin/dashboard/refresh").status_code == 400  # no CSRF token
    res = admin.post("/admin/dashboard/refresh", data={"csrf_token": csrf_from(html)})
    assert res.status_code == 302 and res.headers["Location"].endswith("/admin/dashboard")
    html = page(admin)
    assert active_count(html) == "3" and "Figures refreshed." in html


def test_stale_figures_are_shown_while_a_worker_recomputes_them(app, admin, redis_conn: Redis):
    page(admin)
    old = utcnow() - timedelta(minutes=5)
    for name in dashboard.FIGURES:
        key = dashboard.CACHE_PREFIX + name
        record = json.loads(redis_conn.get(key))
        record["at"] = old.timestamp()
        redis_conn.set(key, json.dumps(record), ex=60)
    with app.app_context():
        seed_sent(4)
    html = page(admin)
    assert active_count(html) == "0" and old.strftime("%H:%M:%S UTC") in html
    assert "(5 min ago; fresh ones are being computed" in html
    assert Queue(TICK_QUEUE, connection=redis_conn).count == 1
    page(admin)  # a second visit does not start a second refresh
    assert Queue(TICK_QUEUE, connection=redis_conn).count == 1
    run_jobs(app)
    assert active_count(page(admin)) == "4"
    assert not redis_conn.exists(dashboard.REFRESH_LOCK)


def test_unreadable_cached_figures_are_recomputed(app, admin, redis_conn: Redis):
    redis_conn.set(dashboard.CACHE_PREFIX + "status_counts", b"not json")
    with app.app_context():
        seed_sent(2)
    assert active_count(page(admin)) == "2"


def test_without_redis_the_dashboard_computes_directly(make_app):
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    add_admin(app)
    client = app.test_client()
    assert post_login(client, EMAIL, PASSWORD).status_code == 302
    with app.app_context():
        seed_sent(2)
    html = page(client)
    assert active_count(html) == "2" and "Redis is not answering" in html
    assert "redis-down" in alert_keys(html) and dd(html, "workers") == "?"
    res = client.post("/admin/dashboard/refresh", data={"csrf_token": csrf_from(html)})
    assert res.status_code == 302
    assert "the figures cannot be kept" in page(client)
