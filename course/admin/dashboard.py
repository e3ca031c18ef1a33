"""The dashboard: the admin's first page. Who signed up, how far they get, and whether the
pipeline is healthy, with a warning for anything that needs the owner.

The counts over every subscriber and delivery (statuses, signups per day, the per-lesson
funnel, completions, bounce and complaint rates) take seconds at a million subscribers,
so each is kept in Redis as JSON (one key per figure) and the page says how old they are.
A figure older than ``FRESH_SECONDS`` is still shown while one background job (on the
tick queue, one at a time thanks to a lock) recomputes it, so no visit waits for the
aggregates except the very first, or one after Redis lost them (or a day went by).
"Refresh now" recomputes them at once. If Redis does not answer, every visit computes them
directly: slower, never an error. The pipeline's own figures (queues, workers, last tick,
pause) are cheap and always live.

The Lessons page reads its per-lesson figures (the same funnel, raw hits, where people are
lost, clicks per link) through the same cache, so both pages show the same numbers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import current_app, flash, redirect, render_template, url_for
from redis import RedisError
from sqlalchemy import func
from werkzeug.wrappers import Response

from .. import dropoff_stats, health, sendstate, tracking_stats, unconfirmed
from ..content import current_course
from ..extensions import db
from ..models import Status, Subscriber
from ..queue import TICK_QUEUE, enqueue, redis_connection
from ..rehearsal import real_subscribers
from ..timeutil import utcnow
from . import bp
from .queries import status_counts

log = logging.getLogger(__name__)

# The version changes whenever a figure's shape or meaning does, so a deploy never reads
# the old one (v2: "opened" counts lessons marked done; the Lessons page's figures).
CACHE_PREFIX = "minicourse:dashboard:v2:"
REFRESH_LOCK = CACHE_PREFIX + "refreshing"
FRESH_SECONDS = 60  # older figures are shown, and recomputed in the background
# Kept for a day, so the owner's first visit of the morning is not the one that waits (at a
# million subscribers the figures take seconds); the page says how old they are.
KEEP_SECONDS = 24 * 3600
LOCK_SECONDS = 120  # one background refresh at a time; a crashed one frees this
SIGNUP_DAYS = 30


# --- the figures --------------------------------------------------------------------------


def signups_per_day(now: datetime, days: int = SIGNUP_DAYS) -> list[tuple[str, int]]:
    """Subscribers created on each of the last ``days`` UTC days (today last), zeros too."""
    first = (now.astimezone(UTC) - timedelta(days=days - 1)).date()
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    day = func.date(Subscriber.created_at)  # stored as naive UTC, so this is the UTC day
    rows = db.session.execute(
        db.select(day, func.count())
        .where(Subscriber.created_at >= start, real_subscribers()).group_by(day)
    ).all()
    return fill_days(first, days, {str(value)[:10]: int(n) for value, n in rows})


def fill_days(first: date, days: int, counts: dict[str, int]) -> list[tuple[str, int]]:
    """One (ISO day, count) per day from ``first``, with zero for a day nobody signed up."""
    return [(d.isoformat(), counts.get(d.isoformat(), 0))
            for d in (first + timedelta(days=i) for i in range(days))]


FIGURES: dict[str, Callable[[datetime], Any]] = {  # the dashboard's
    "status_counts": lambda now: status_counts(),
    "signups": lambda now: signups_per_day(now),
    "funnel": lambda now: [asdict(row) for row in tracking_stats.lesson_funnel()],
    "completions": lambda now: tracking_stats.completions(),
    "rates": lambda now: asdict(health.sending_rates(now)),
}
LESSON_FIGURES: dict[str, Callable[[datetime], Any]] = {  # the Lessons page's
    "funnel": FIGURES["funnel"],
    "completions": FIGURES["completions"],
    "hits": lambda now: [[position, asdict(counts)] for position, counts
                         in sorted(tracking_stats.hits_per_lesson().items())],
    "loss": lambda now: dropoff_stats.lesson_loss(
        now, current_app.config["ADMIN_STALLED_DAYS"], current_course().length),
    "links": lambda now: [asdict(row) for row in tracking_stats.clicks_per_link()],
}
@bp.app_template_global("figure_meaning")
def figure_meaning(name: str, days: int = dropoff_stats.DEFAULT_STALLED_DAYS) -> tuple[str, str]:
    """A figure's label and meaning, for the legends (one wording for every admin page)."""
    label, meaning = {**tracking_stats.FIGURES, **dropoff_stats.FIGURES}[name]
    return label, meaning.replace("{days}", str(days))


# Each page's figures; a figure two pages show ("funnel") is one cached value for both.
GROUPS = {"dashboard": FIGURES, "lessons": LESSON_FIGURES}
EVERY_FIGURE = {name: f for figures in GROUPS.values() for name, f in figures.items()}


@dataclass(frozen=True)
class Figures:
    """The expensive figures, when they were computed, and whether Redis keeps them."""

    values: dict[str, Any]
    as_of: datetime
    cached: bool = True
    refreshing: bool = False  # older than FRESH_SECONDS: a background job is on it


def compute(names: Sequence[str], now: datetime) -> dict[str, Any]:
    # Through JSON even when not cached, so a figure looks the same either way.
    return {name: json.loads(json.dumps(EVERY_FIGURE[name](now))) for name in names}


def _store(values: dict[str, Any], at: float) -> None:
    conn = redis_connection()
    with conn.pipeline(transaction=False) as pipe:
        for name, value in values.items():
            pipe.set(CACHE_PREFIX + name, json.dumps({"at": at, "value": value}),
                     ex=KEEP_SECONDS)
        pipe.execute()


def _parse(blob: bytes | str | None) -> dict[str, Any] | None:
    """A cached record ({"at": epoch seconds, "value": ...}), or None if unusable."""
    try:
        record = json.loads(blob) if blob else None
    except ValueError:
        return None
    if not isinstance(record, dict) or "value" not in record:
        return None
    return record if isinstance(record.get("at"), int | float) else None


def load_figures(now: datetime | None = None, group: str = "dashboard") -> Figures:
    """One page's cached figures (``GROUPS[group]``), computing the missing ones, and
    starting a background refresh of the page's figures when one of them is stale."""
    now = now or utcnow()
    names = list(GROUPS[group])
    try:
        conn = redis_connection()
        blobs = conn.mget([CACHE_PREFIX + name for name in names])
    except RedisError as exc:
        log.warning("dashboard: Redis unavailable, computing the figures directly: %s", exc)
        return Figures(compute(names, now), now, cached=False)
    records = {name: r for name, blob in zip(names, blobs, strict=True)
               if (r := _parse(blob)) is not None}
    missing = [name for name in names if name not in records]
    if missing:
        at = now.timestamp()
        computed = compute(missing, now)
        records.update({name: {"at": at, "value": v} for name, v in computed.items()})
        try:
            _store(computed, at)
        except RedisError:
            log.warning("dashboard: could not cache the figures", exc_info=True)
    oldest = min(float(r["at"]) for r in records.values())
    stale = now.timestamp() - oldest > FRESH_SECONDS
    if stale:
        _schedule_refresh(group)
    values = {name: records[name]["value"] for name in names}
    return Figures(values, datetime.fromtimestamp(oldest, UTC), refreshing=stale)


def _schedule_refresh(group: str) -> None:
    # One refresh at a time, whichever page asked: a page that finds the lock taken asks
    # again on its next visit once the running refresh is over.
    try:
        if redis_connection().set(REFRESH_LOCK, "1", nx=True, ex=LOCK_SECONDS):
            enqueue("course.admin.dashboard.refresh_figures", group, queue_name=TICK_QUEUE,
                    retries=0)
    except RedisError:
        log.warning("dashboard: could not start a refresh", exc_info=True)


def refresh_figures(group: str = "dashboard") -> bool:
    """Recompute and cache one page's figures (the background job, and "Refresh now").

    Returns False when Redis could not keep them.
    """
    started = time.monotonic()
    now = utcnow()
    values = compute(list(GROUPS.get(group, FIGURES)), now)
    try:
        _store(values, now.timestamp())
        redis_connection().delete(REFRESH_LOCK)
    except RedisError:
        log.warning("dashboard: could not cache the figures", exc_info=True)
        return False
    log.info("dashboard: %s figures refreshed in %.2f s", group, time.monotonic() - started)
    return True


# --- charts: plain geometry, drawn as inline SVG by the template ---------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    fill: str
    title: str


@dataclass(frozen=True)
class Chart:
    """Bars in a ``width`` × ``height`` box; the SVG scales it to the page (``viewBox``)."""

    width: int
    height: int
    left: float  # the plot area, inside the axis labels
    top: float
    bottom: float
    right: float
    y_max: int
    bars: list[Bar]
    x_labels: list[tuple[float, str, str]]  # x, text, SVG text-anchor


WIDTH, HEIGHT = 320, 180  # about a phone's width, so the text stays legible there
LEFT, TOP, BOTTOM = 34.0, 10.0, 156.0
SERIES = (  # the funnel's bars, in order: (LessonFunnel field, legend, colour)
    ("sent", "sent", "#6b7383"),
    ("human_opened", "opened (by a person, or done)", "#1f5fbf"),
    ("clicked", "clicked", "#b35c00"),
    ("done", "done", "#1d6b3a"),
)
SIGNUP_FILL = "#1f5fbf"


NICE_STEPS = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)


def nice_max(value: int) -> int:
    """The axis top: ``value`` itself up to 10, then the next round number at or above it
    (25 for 24, 600 for 501), so the tallest bar fills most of the chart."""
    if value <= 10:
        return max(1, value)
    scale = 10 ** math.floor(math.log10(value))
    return next(int(step * scale) for step in NICE_STEPS if step * scale >= value)


def _height(value: int, y_max: int) -> float:
    return round((BOTTOM - TOP) * value / y_max, 2)


def signup_chart(days: Sequence[Sequence[Any]]) -> Chart:
    """One bar per day; the first, middle and last days are labelled."""
    y_max = nice_max(max((int(n) for _, n in days), default=0))
    slot = (WIDTH - LEFT - 2) / max(1, len(days))
    bars, labels = [], []
    for i, (day, n) in enumerate(days):
        x = LEFT + i * slot
        h = _height(int(n), y_max)
        noun = "signup" if int(n) == 1 else "signups"
        bars.append(Bar(round(x + slot * 0.15, 2), round(BOTTOM - h, 2), round(slot * 0.7, 2),
                        h, SIGNUP_FILL, f"{day}: {n} {noun}"))
        if i == 0:
            labels.append((round(x + slot * 0.15, 2), str(day)[5:], "start"))
        elif i == len(days) - 1:
            labels.append((round(x + slot * 0.85, 2), str(day)[5:], "end"))
        elif i == len(days) // 2:
            labels.append((round(x + slot / 2, 2), str(day)[5:], "middle"))
    return Chart(WIDTH, HEIGHT, LEFT, TOP, BOTTOM, WIDTH - 2, y_max, bars, labels)


def funnel_chart(rows: Sequence[tracking_stats.LessonFunnel]) -> Chart:
    """Four bars per lesson (sent, opened by a person, clicked, done), labelled by position."""
    y_max = nice_max(max((row.sent for row in rows), default=0))
    slot = (WIDTH - LEFT - 2) / max(1, len(rows))
    bar = slot * 0.8 / len(SERIES)
    every = math.ceil(len(rows) / 12) or 1  # past 12 lessons, label every 2nd, 3rd, ...
    bars, labels = [], []
    for i, row in enumerate(rows):
        x = LEFT + i * slot + slot * 0.1
        for j, (name, legend, fill) in enumerate(SERIES):
            value = int(getattr(row, name))
            h = _height(value, y_max)
            bars.append(Bar(round(x + j * bar, 2), round(BOTTOM - h, 2), round(bar * 0.9, 2),
                            h, fill, f"Lesson {row.position}: {value} {legend}"))
        if i % every == 0:
            labels.append((round(LEFT + i * slot + slot / 2, 2), str(row.position), "middle"))
    return Chart(WIDTH, HEIGHT, LEFT, TOP, BOTTOM, WIDTH - 2, y_max, bars, labels)


# --- the page -----------------------------------------------------------------------------


def funnel_rows(funnel: list[dict[str, Any]]) -> list[tracking_stats.LessonFunnel]:
    """Every lesson of today's course in order (zeros for one never sent), then any
    position past its end that was sent before the course got shorter."""
    by_position = {row["position"]: tracking_stats.LessonFunnel(**row) for row in funnel}
    rows = [by_position.pop(lesson.position, tracking_stats.LessonFunnel(lesson.position,
                                                                          lesson.slug))
            for lesson in current_course().lessons]
    return rows + sorted(by_position.values(), key=lambda row: row.position)


@bp.route("/")
@bp.route("/dashboard")
def dashboard() -> str:
    now = utcnow()
    figures = load_figures(now, "dashboard")
    values = figures.values
    pipeline = health.pipeline_health(now)
    rates = health.SendingRates(**values["rates"])
    funnel = funnel_rows(values["funnel"])
    signups = [(str(day), int(n)) for day, n in values["signups"]]
    completions = values["completions"]
    return render_template(
        "admin/dashboard.html",
        figures=figures,
        figures_age=health.age_text(now - figures.as_of),
        counts=values["status_counts"],
        statuses=Status.ALL,
        signups=signups,
        signups_total=sum(n for _, n in signups),
        busiest=max(signups, key=lambda day: day[1]),
        signup_chart=signup_chart(signups),
        funnel=funnel,
        funnel_chart=funnel_chart(funnel),
        series=SERIES,
        completions=completions,
        completion_rate=(completions["completed"] / completions["started"]
                         if completions["started"] else None),
        rates=rates,
        pipeline=pipeline,
        alerts=health.warnings(pipeline, rates) + held_alerts(now),
        held=unconfirmed.held(now),
        age_text=health.age_text,
        limits={"bounce": health.BOUNCE_LIMIT, "complaint": health.COMPLAINT_LIMIT,
                "tick": health.TICK_STALE_AFTER},
    )


def held_alerts(now: datetime) -> list[health.Alert]:
    """Unconfirmed lessons past their window (each holds its subscriber) and an outage."""
    found = []
    late = unconfirmed.held(now)[1]
    if late:
        found.append(health.Alert("held", f"{late} lesson{'' if late == 1 else 's'} held: "
                                  "sent without an answer and not settled by the provider's "
                                  "events. Settle each on the Deliveries page."))
    out = sendstate.backing_off(now)
    if out is not None:
        found.append(health.Alert("backoff", "The mail provider is not taking mail (an outage "
                                  f"or a rate limit): sending waits until {out['until'][:19]} "
                                  f"UTC ({out.get('reason', '')}). Nothing is lost."))
    return found


@bp.post("/dashboard/refresh")
def refresh_dashboard() -> Response:
    if refresh_figures():
        flash("Figures refreshed.", "message")
    else:
        flash("Redis is not answering, so the figures cannot be kept: each visit computes "
              "them afresh until it is back.", "error")
    return redirect(url_for("admin.dashboard"))
