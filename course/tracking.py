"""Links inside lesson emails: the open pixel, click redirects, "mark done" and the web view.

Every link carries a signed, purpose-scoped token; an id is never trusted on its own, and
clicks redirect only to the URL signed into the email. The pixel always answers a GIF so a
mail client never shows a broken image. Marking a lesson done is a POST (the page submits
itself with a script) so a mail scanner following the link records nothing.
"""

from __future__ import annotations

import base64
import logging
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, update
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import abort

from . import tokens
from .content import current_course
from .extensions import db, limiter
from .lessons import Course
from .models import Delivery, DeliveryStatus, Event, EventKind, Status, Subscriber
from .public import INVALID_LINK, id_from, markdown, render_page, token_id
from .schedule import valid_timezone
from .timeutil import utcnow

log = logging.getLogger(__name__)

bp = Blueprint("tracking", __name__)

# A 1x1 transparent GIF89a.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
}


def user_agent() -> str:
    return (request.user_agent.string or "")[:512]


def delivery_id_or_none(purpose: str, token: str) -> int | None:
    try:
        payload = tokens.read(purpose, token)
    except tokens.TokenInvalid:
        return None
    value = payload.get("d") if isinstance(payload, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def safe_redirect_target(url: Any) -> bool:
    """Only absolute http(s) URLs, whatever was signed: no javascript:, data: or header tricks."""
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _record(delivery_id: int, kind: str, url: str | None = None) -> None:
    """Count an open or a click, keeping the first one's time; atomic, no read-then-write."""
    now = utcnow()
    sub_id = db.session.scalar(db.select(Delivery.subscriber_id).where(Delivery.id == delivery_id))
    if sub_id is None:
        return
    by_id = update(Delivery).where(Delivery.id == delivery_id)
    if kind == EventKind.CLICK:
        db.session.execute(by_id.values(click_count=Delivery.click_count + 1))
        db.session.execute(by_id.where(Delivery.clicked_at.is_(None)).values(clicked_at=now))
    # A click proves an open even when images were blocked; an open counts once per pixel.
    opens = by_id if kind == EventKind.OPEN else by_id.where(Delivery.opened_at.is_(None))
    db.session.execute(opens.values(open_count=Delivery.open_count + 1))
    db.session.execute(by_id.where(Delivery.opened_at.is_(None)).values(opened_at=now))
    db.session.add(Event(subscriber_id=sub_id, delivery_id=delivery_id, kind=kind,
                         occurred_at=now, url=url, user_agent=user_agent()))
    db.session.commit()


def record(delivery_id: int, kind: str, url: str | None = None) -> None:
    """Tracking must never break the reader's experience: a failure is logged, not shown."""
    try:
        _record(delivery_id, kind, url)
    except SQLAlchemyError:
        db.session.rollback()
        log.exception("could not record %s for delivery %d", kind, delivery_id)


@bp.route("/o/<token>.gif")
@limiter.exempt
def pixel(token: str) -> ResponseReturnValue:
    if request.method == "GET":  # HEAD is a probe, not an open
        delivery_id = delivery_id_or_none("open", token)
        if delivery_id is not None:
            record(delivery_id, EventKind.OPEN)
    return Response(PIXEL, mimetype="image/gif", headers=NO_CACHE)


@bp.route("/c/<token>")
@limiter.exempt
def click(token: str) -> ResponseReturnValue:
    try:
        payload = tokens.read("click", token)
    except tokens.TokenInvalid:
        abort(400, description=INVALID_LINK)
    delivery_id = id_from(payload, "d")
    url = payload.get("u")
    if not safe_redirect_target(url):
        abort(400, description=INVALID_LINK)
    if request.method == "GET":
        record(delivery_id, EventKind.CLICK, url)
    response = redirect(url, 302)
    response.headers["Cache-Control"] = "no-store"
    return response


def load_delivery(purpose: str, token: str) -> Delivery:
    try:
        delivery_id = token_id(purpose, token, "d")
    except tokens.TokenExpired:
        abort(400, description=INVALID_LINK)
    delivery = db.session.get(Delivery, delivery_id)
    if delivery is None:
        abort(404, description="This lesson is no longer available.")
    return delivery


@bp.route("/done/<token>", methods=["GET", "POST"])
def done(token: str) -> ResponseReturnValue:
    delivery = load_delivery("complete", token)
    course = current_course()
    if request.method == "POST":
        mark_done(delivery)
    elif delivery.completed_at is None:
        return render_page("public/done.html", token=token, delivery=delivery,
                           lesson=course.lesson_by_slug(delivery.lesson_slug))
    sub = delivery.subscriber
    completed = done_count(sub.id, course)
    return render_page(
        "public/progress.html",
        delivery=delivery,
        lesson=course.lesson_by_slug(delivery.lesson_slug),
        completed=completed,
        total=course.length,
        next_step=what_next(course, sub, delivery, completed, utcnow()),
    )


def mark_done(delivery: Delivery) -> None:
    """Record completion once: the conditional update lets exactly one request win."""
    now = utcnow()
    won = db.session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id, Delivery.completed_at.is_(None))
        .values(completed_at=now)
        .returning(Delivery.id)
    ).scalar_one_or_none()
    if won is not None:
        db.session.add(Event(subscriber_id=delivery.subscriber_id, delivery_id=delivery.id,
                             kind=EventKind.COMPLETE, occurred_at=now, user_agent=user_agent()))
    db.session.commit()


def done_count(subscriber_id: int, course: Course) -> int:
    count = db.session.scalar(
        db.select(func.count()).select_from(Delivery).where(
            Delivery.subscriber_id == subscriber_id, Delivery.completed_at.is_not(None)
        )
    )
    return min(count or 0, course.length)


def what_next(course: Course, sub: Subscriber, delivery: Delivery, completed: int,
              now: datetime) -> dict[str, Any]:
    """What the progress page says comes next, as plain data for the template."""
    if completed >= course.length:
        return {"kind": "complete", "completion": markdown(course.completion)}
    lesson = course.lesson_at(delivery.position + 1)
    if lesson is None:
        return {"kind": "last", "left": course.length - completed}
    if lesson.position < sub.next_position:
        sent = db.session.scalar(db.select(Delivery).where(
            Delivery.subscriber_id == sub.id, Delivery.lesson_slug == lesson.slug,
            Delivery.status == DeliveryStatus.SENT))
        web_url = url_for("tracking.lesson", token=tokens.make("web", {"d": sent.id})) \
            if sent is not None else None
        return {"kind": "inbox", "lesson": lesson, "web_url": web_url}
    if sub.status == Status.ACTIVE:
        when = sub.next_send_at if sub.next_position == lesson.position else None
        return {"kind": "scheduled", "lesson": lesson, "when": roughly(when, sub.timezone, now)}
    return {"kind": "stopped", "lesson": lesson}


def roughly(when: datetime | None, timezone: str, now: datetime) -> str:
    """'tomorrow, around 09:00 (Europe/Paris time)': when the next lesson should arrive."""
    if when is None:
        return "soon"
    if when <= now + timedelta(minutes=10):
        return "in the next few minutes"
    zone = ZoneInfo(timezone if valid_timezone(timezone) else "UTC")
    local = when.astimezone(zone)
    days = (local.date() - now.astimezone(zone).date()).days
    at = f"around {local:%H:%M} ({zone.key} time)"
    if days == 0:
        return f"later today, {at}"
    if days == 1:
        return f"tomorrow, {at}"
    if days < 7:
        return f"on {local:%A}, {at}"
    return f"on {local.day} {local:%B}, {at}"


@bp.route("/l/<token>")
def lesson(token: str) -> ResponseReturnValue:
    """The lesson as a web page; reading it changes nothing."""
    delivery = load_delivery("web", token)
    course = current_course()
    found = course.lesson_by_slug(delivery.lesson_slug)
    if found is None:
        abort(404, description="This lesson is no longer part of the course.")
    return render_page(
        "public/lesson.html",
        lesson=found,
        body=markdown(found.body),
        delivery=delivery,
        done_url=url_for("tracking.done", token=tokens.make("complete", {"d": delivery.id})),
    )
