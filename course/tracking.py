"""Links inside lesson emails: the open pixel, click redirects, "mark done" and the web view.

Every link carries a signed, purpose-scoped token; an id is never trusted on its own, and
clicks redirect only to the URL signed into the email. The pixel always answers a GIF so a
mail client never shows a broken image. Marking a lesson done is a POST (the page submits
itself with a script) so a mail scanner following the link records nothing.

The pixel and the click redirect are the hot paths: a token check, one Redis RPUSH (its
reply read after the answer has gone out) and a fixed answer, with no database session,
user loading, rate-limit lookup or cookie. A valid GET of either is answered in front of
Flask by ``course/tracking_fast.py``; the views here answer the rest. See
``course/tracking_buffer.py`` for how hits reach the database, and ``course/machines.py``
for which of them are machines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Flask, Response, current_app, redirect, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, update
from werkzeug.exceptions import abort

from . import tokens, tracking_buffer, webhooks_out
from .content import current_course
from .extensions import db, limiter
from .ids import parse_id
from .lessons import Course
from .models import Delivery, DeliveryStatus, Event, EventKind, Status, Subscriber
from .public import INVALID_LINK, markdown, render_page, token_id
from .schedule import next_send_time, valid_timezone
from .timeutil import utcnow
from .tracking_fast import (
    PIXEL,
    PIXEL_HEADERS,
    install_fast_path,
    read_click,
    safe_redirect_target,
)

log = logging.getLogger(__name__)

bp = Blueprint("tracking", __name__)
bp.record_once(install_fast_path)  # valid pixel and click GETs are answered before Flask


def user_agent() -> str:
    return request.headers.get("User-Agent", "")[:512]


def delivery_id_or_none(purpose: str, token: str) -> int | None:
    try:
        payload = tokens.read(purpose, token)
    except tokens.TokenInvalid:
        return None
    return parse_id(payload.get("d")) if isinstance(payload, dict) else None


# Endpoints Flask-Limiter leaves alone before it resolves any limit (``exempt`` alone still
# resolves them on every request).
UNLIMITED = frozenset({"tracking.healthz", "tracking.pixel", "tracking.click"})


@limiter.request_filter
def _unlimited() -> bool:
    return request.endpoint in UNLIMITED


@bp.route("/healthz")
@limiter.exempt
def healthz() -> ResponseReturnValue:
    """For load balancers (and the tracking benchmark's baseline): the app answers."""
    return Response("ok", mimetype="text/plain", headers={"Cache-Control": "no-store"})


def _record(kind: str, delivery_id: int, url: str | None = None,
            canary: bool = False) -> Callable[[], None] | None:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return tracking_buffer.record(
        app, tracking_buffer.new_hit(kind, delivery_id, user_agent(), url, canary))


@bp.route("/o/<token>.gif")
@limiter.exempt
def pixel(token: str) -> ResponseReturnValue:
    """The open pixel. A valid GET is normally answered in front of Flask (``FastPath``);
    this view answers the rest (HEAD, a bad token), and records a valid GET it gets."""
    response = Response(PIXEL, headers=PIXEL_HEADERS)
    if request.method == "GET":  # HEAD is a probe, not an open
        delivery_id = delivery_id_or_none("open", token)
        if delivery_id is not None:
            confirm = _record(EventKind.OPEN, delivery_id)
            if confirm is not None:
                response.call_on_close(confirm)  # Redis's reply, read after the answer
    return response


@bp.route("/c/<token>")
@bp.route("/c/<token>/<recipient>")
@limiter.exempt
def click(token: str, recipient: str | None = None) -> ResponseReturnValue:
    """Redirect to the signed URL (see ``read_click`` for the link's two tokens). The
    hidden canary link (``"k": 1``) leads to the lesson's web view and records a machine
    click: no person can see it to click it. (A valid GET is normally answered in front
    of Flask, by ``FastPath``; this view gives the 400s.)"""
    found = read_click(token, recipient)
    if found is None:
        abort(400, description=INVALID_LINK)
    delivery_id, url, canary = found
    if canary:
        url = url_for("tracking.lesson", token=tokens.make("web", {"d": delivery_id}))
    elif not safe_redirect_target(url):
        abort(400, description=INVALID_LINK)
    response = redirect(url, 302)
    response.headers["Cache-Control"] = "no-store"
    if request.method == "GET":
        confirm = _record(EventKind.CLICK, delivery_id, None if canary else url, canary)
        if confirm is not None:
            response.call_on_close(confirm)
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
        mark_done(delivery, course)
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


def mark_done(delivery: Delivery, course: Course) -> None:
    """Record completion once: the conditional update lets exactly one request win.

    Then (each step idempotent, so a repeated POST also repairs an interrupted one) the
    course is marked completed if this was the last lesson missing, and in a
    progress-gated course the next lesson is released for the next send hour.
    """
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
        if webhooks_out.enabled():
            webhooks_out.emit("lesson.completed", webhooks_out.lesson_data(
                delivery.id, delivery.subscriber_id, delivery.subscriber.email,
                delivery.lesson_slug, delivery.position, at=webhooks_out.iso(now)))
    # Committed before counting, so of two last lessons marked at once the later sees both.
    db.session.commit()
    complete_course(delivery.subscriber_id, course, now)
    if course.progress_gated:
        release_next(delivery, course, now)


def complete_course(subscriber_id: int, course: Course, now: datetime) -> bool:
    """Set ``Subscriber.completed_at`` once every lesson of the course is marked done."""
    if done_count(subscriber_id, course) < course.length:
        return False
    won = db.session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id, Subscriber.completed_at.is_(None))
        .values(completed_at=now)
        .returning(Subscriber.id)
    ).scalar_one_or_none()
    if won is not None and webhooks_out.enabled():
        email = db.session.scalar(db.select(Subscriber.email).where(Subscriber.id == won))
        webhooks_out.emit("course.completed", webhooks_out.subscriber_data(
            subscriber_id, email or "", at=webhooks_out.iso(now), lessons=course.length))
    db.session.commit()
    return won is not None


def released_send_time(course: Course, timezone: str, sent_at: datetime,
                       done_at: datetime, position: int) -> datetime:
    """When gated lesson ``position`` goes out once the one before it is done: the next
    send slot after ``done_at``, but never before its normal wait (the course's cadence or
    the lesson's ``delay_days``) after the previous lesson."""
    normal = next_send_time(sent_at, timezone, course.rules, days=course.days_before(position))
    soonest = next_send_time(done_at, timezone, course.rules, days=0)
    if soonest < done_at:
        soonest = next_send_time(done_at, timezone, course.rules, days=1)
    return max(normal, soonest)


def release_next(delivery: Delivery, course: Course, now: datetime) -> None:
    """Progress-gated: the lesson after this one was waiting for it; bring it forward.

    Only ever earlier (never past the ``max_wait_days`` slot already set), only for the
    latest lesson sent, and only while the subscriber is active and waiting.
    """
    sub = db.session.get(Subscriber, delivery.subscriber_id)
    if (sub is None or delivery.sent_at is None or sub.next_send_at is None
            or sub.status != Status.ACTIVE or sub.next_position != delivery.position + 1):
        return
    zone = sub.timezone if valid_timezone(sub.timezone) else "UTC"
    when = released_send_time(course, zone, delivery.sent_at, now, delivery.position + 1)
    db.session.execute(
        update(Subscriber)
        .where(Subscriber.id == sub.id, Subscriber.status == Status.ACTIVE,
               Subscriber.next_position == delivery.position + 1,
               Subscriber.next_send_at > when)
        .values(next_send_at=when)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def done_count(subscriber_id: int, course: Course) -> int:
    """Lessons of the current course this subscriber has marked done."""
    count = db.session.scalar(
        db.select(func.count()).select_from(Delivery).where(
            Delivery.subscriber_id == subscriber_id, Delivery.completed_at.is_not(None),
            Delivery.lesson_slug.in_([lesson.slug for lesson in course.lessons]),
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
