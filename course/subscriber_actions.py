"""What the course owner can do to one subscriber, apart from HTTP.

Each action first checks that it makes sense in the subscriber's current state and raises
:class:`NotPossible` (having changed nothing) when it does not; otherwise it makes its
change, adds its audit entry (``course/audit.py``) and commits both in one transaction, so
an action that fails records nothing and an entry never exists without its action.

Invariant 1 holds: a lesson is sent again only by :func:`resend_lesson`, an explicit,
audited admin decision that re-queues the subscriber's one delivery row of that lesson.
"Send the next lesson now" and "move to lesson N" never touch a lesson that was sent.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, update

from . import audit, signup
from .content import current_course
from .extensions import affected_rows, db
from .lessons import Lesson
from .models import Delivery, DeliveryStatus, Event, OutgoingWebhook, Status, Subscriber
from .schedule import next_slot
from .timeutil import utcnow

# The checkbox values that make a resend deliberate (the first matches the deliveries page).
CONFIRM_NOT_DELIVERED = "not-delivered"
CONFIRM_SEND_AGAIN = "send-again"
# Deliveries that may already be in the inbox; "sending" only once a worker left it stuck.
MAYBE_DELIVERED = (DeliveryStatus.UNCONFIRMED, DeliveryStatus.SENDING)
STUCK_AFTER = timedelta(minutes=10)  # as in admin/queries.py: a send job dies by then
NO_MAIL = (Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED)
ERASED_DOMAIN = "erased.invalid"  # .invalid never resolves (RFC 2606): nothing can be sent


class NotPossible(Exception):
    """The action makes no sense for this subscriber now; the message says why, plainly."""


def load(subscriber_id: int) -> Subscriber | None:
    """The subscriber, locked for this transaction on PostgreSQL so two admins' actions
    on the same person happen one after the other."""
    return db.session.get(Subscriber, subscriber_id, with_for_update=True)


def erased_address(subscriber_id: int) -> str:
    return f"erased-{subscriber_id}@{ERASED_DOMAIN}"


def is_erased(sub: Subscriber) -> bool:
    return sub.email == erased_address(sub.id)


def _not_erased(sub: Subscriber) -> None:
    if is_erased(sub):
        raise NotPossible("Their personal data was erased: nothing more can be done for them.")


def _next_slot(sub: Subscriber, now: datetime) -> datetime:
    """Their next local send hour from now: today's if it is still ahead, else the next."""
    return next_slot(now, sub.timezone, current_course().rules)


def _delivery_of(sub: Subscriber, lesson: Lesson) -> Delivery | None:
    return db.session.scalar(db.select(Delivery).where(
        Delivery.subscriber_id == sub.id, Delivery.lesson_slug == lesson.slug))


def _cancel_queued(sub: Subscriber, why: str) -> int:
    """Hold back lessons queued but not yet claimed; a claimed one is already leaving.

    A queued resend of a lesson that was sent before goes back to ``sent``: the resend is
    called off, the first send still happened.
    """
    resent = Delivery.sent_at.is_not(None)
    return affected_rows(db.session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == sub.id, Delivery.status == DeliveryStatus.QUEUED)
        .values(status=case((resent, DeliveryStatus.SENT), else_=DeliveryStatus.CANCELLED),
                error=case((resent, "resend called off: " + why), else_=why))
        .execution_options(synchronize_session=False)
    ))


def _lesson(position: int) -> Lesson:
    lesson = current_course().lesson_at(position)
    if lesson is None:
        raise NotPossible(f"There is no lesson {position} in the course.")
    return lesson


def _already(lesson: Lesson, delivery: Delivery) -> NotPossible:
    """Why a lesson that already has a live delivery cannot simply be sent (again)."""
    n = lesson.position
    if delivery.status in (DeliveryStatus.QUEUED, DeliveryStatus.SENDING):
        return NotPossible(f"Lesson {n} is already on its way ({delivery.status}).")
    if delivery.status == DeliveryStatus.FAILED:
        return NotPossible(f"Lesson {n} failed earlier: resend it from the lessons table.")
    return NotPossible(f"Lesson {n} was already sent ({delivery.status}): to send it again, "
                       "use Resend in the lessons table.")


# --- pause, resume, send now, move ------------------------------------------------------


def pause(sub: Subscriber) -> None:
    """Stop sending to an active subscriber for now; their queued lesson is held back."""
    if sub.status != Status.ACTIVE:
        raise NotPossible("Only an active subscriber can be paused.")
    sub.status = Status.PAUSED
    sub.next_send_at = None
    cancelled = _cancel_queued(sub, "paused by an admin")
    audit.record(sub.id, "pause", cancelled=cancelled)
    db.session.commit()


def resume(sub: Subscriber) -> datetime:
    """Pick up where they left off: the next lesson at their next local send hour."""
    if sub.status != Status.PAUSED:
        raise NotPossible("Only a paused subscriber can be resumed.")
    slot = _next_slot(sub, utcnow())
    sub.status = Status.ACTIVE
    sub.next_send_at = slot
    audit.record(sub.id, "resume", next_send_at=_iso(slot))
    db.session.commit()
    return slot


def send_next_now(sub: Subscriber) -> Lesson:
    """Make their next lesson due now; the tick creates and sends it (within a minute)."""
    _not_erased(sub)
    if sub.status == Status.PAUSED:
        raise NotPossible("They are paused: resume them first, then send the next lesson.")
    if sub.status == Status.FINISHED:
        raise NotPossible("They have finished the course: there is no next lesson to send.")
    if sub.status != Status.ACTIVE:
        raise NotPossible(f"They are {sub.status}: lessons go only to active subscribers.")
    lesson = current_course().lesson_at(sub.next_position)
    if lesson is None:
        raise NotPossible("They have had every lesson: there is no next lesson to send.")
    delivery = _delivery_of(sub, lesson)
    if delivery is not None and delivery.status != DeliveryStatus.CANCELLED:
        raise _already(lesson, delivery)
    sub.next_send_at = utcnow()
    audit.record(sub.id, "send_next", position=lesson.position, lesson=lesson.slug)
    db.session.commit()
    return lesson


def move_to(sub: Subscriber, position: int) -> datetime | None:
    """Make lesson ``position`` their next one, due at their next send hour (paused: when
    resumed). Lessons already sent are not sent again, so moving to one of them is refused.

    Returns when it is due (None while paused).
    """
    _not_erased(sub)
    if sub.status not in (Status.ACTIVE, Status.PAUSED, Status.FINISHED):
        raise NotPossible(f"They are {sub.status}: only active, paused or finished "
                          "subscribers can be moved to another lesson.")
    lesson = _lesson(position)
    if position == sub.next_position and sub.status != Status.FINISHED:
        raise NotPossible(f"Lesson {position} is already their next lesson: nothing changed.")
    delivery = _delivery_of(sub, lesson)
    if delivery is not None and delivery.status != DeliveryStatus.CANCELLED:
        raise _already(lesson, delivery)
    was = sub.next_position
    cancelled = _cancel_queued(sub, f"moved to lesson {position} by an admin")
    sub.next_position = position
    if sub.status == Status.PAUSED:
        sub.next_send_at = None
    else:
        sub.status = Status.ACTIVE
        sub.finished_at = None
        sub.next_send_at = _next_slot(sub, utcnow())
    audit.record(sub.id, "move", **{"from": was, "to": position, "cancelled": cancelled})
    db.session.commit()
    return sub.next_send_at


# --- resend -------------------------------------------------------------------------------


def resend_lesson(sub: Subscriber, position: int, confirm: str = "") -> tuple[Lesson, str]:
    """Queue their delivery of lesson ``position`` again (the same row: never a second one).

    A failed or cancelled lesson is simply re-queued. One that may already be in their inbox
    (unconfirmed, or stuck sending) needs ``confirm == "not-delivered"``; one that was sent
    needs ``confirm == "send-again"``. Anyone who still takes mail, finished or paused too
    (the send path sends it to them); not someone unsubscribed, bounced or complained.
    Returns the lesson and the delivery's status before.
    """
    _not_erased(sub)
    lesson = _lesson(position)
    delivery = _delivery_of(sub, lesson)
    if delivery is None:
        raise NotPossible(f"Lesson {position} was never sent to them: nothing to resend.")
    if sub.status in (*NO_MAIL, Status.PENDING):
        raise NotPossible(f"They are {sub.status}: no lesson can be sent to them.")
    was = delivery.status
    stuck = delivery.claimed_at is not None and delivery.claimed_at < utcnow() - STUCK_AFTER
    if was == DeliveryStatus.QUEUED or (was == DeliveryStatus.SENDING and not stuck):
        raise NotPossible(f"Lesson {position} is already on its way ({was}).")
    if was in MAYBE_DELIVERED and confirm != CONFIRM_NOT_DELIVERED:
        raise NotPossible(f"Nothing was resent: lesson {position} may already have been "
                          "delivered. Check the mail provider's activity log first, then tick "
                          "“I checked: it was not delivered”.")
    if was == DeliveryStatus.SENT and confirm != CONFIRM_SEND_AGAIN:
        raise NotPossible(f"Nothing was resent: lesson {position} was sent already. Tick "
                          "“Yes, send it again” to send it once more.")
    taken = affected_rows(db.session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id, Delivery.status == was)
        .values(status=DeliveryStatus.QUEUED, attempts=0, error="", enqueued_at=None)
        .execution_options(synchronize_session=False)
    ))
    if not taken:  # a worker or another admin changed it meanwhile
        raise NotPossible(f"Lesson {position} changed meanwhile: reload the page and look.")
    audit.record(sub.id, "resend", position=position, lesson=lesson.slug, was=was)
    db.session.commit()
    return lesson, was


# --- unsubscribe, erase, export -----------------------------------------------------------


def _queued_count(sub: Subscriber) -> int:
    return db.session.scalar(db.select(func.count()).select_from(Delivery).where(
        Delivery.subscriber_id == sub.id, Delivery.status == DeliveryStatus.QUEUED)) or 0


def unsubscribe(sub: Subscriber) -> str:
    """Stop all mail, exactly as their own unsubscribe link does (``signup.unsubscribe``:
    queued lessons cancelled, an event, the ``subscriber.unsubscribed`` webhook).

    Returns the status they had.
    """
    _not_erased(sub)
    if sub.status == Status.UNSUBSCRIBED:
        raise NotPossible("They are unsubscribed already.")
    if sub.status in NO_MAIL:
        raise NotPossible(f"They get no mail already: their status is {sub.status}.")
    was = sub.status
    audit.record(sub.id, "unsubscribe", was=was, cancelled=_queued_count(sub))
    signup.unsubscribe(sub.id, source="admin")  # commits its change and the entry together
    db.session.commit()
    return was


def erase(sub: Subscriber) -> str:
    """Remove their personal data for good and stop all mail; keep anonymous history.

    The address becomes ``erased-<id>@erased.invalid`` (unique, and undeliverable), the
    name, consent IP and user agent are emptied and the time zone reset to the course's.
    Their deliveries and events stay, so the course's figures keep counting them, but with
    the address taken out of provider error messages and the user agents of their opens
    and clicks emptied. Click URLs stay: they are the course's own links, the same for
    everyone. Outgoing webhook payloads about them are rewritten with the placeholder, so a
    pending one still tells integrators (``subscriber.unsubscribed``) without the address.
    Audit entries never held personal data and stay as they are. Not covered: opens and
    clicks of emails they already have, made after the erase (or buffered in Redis at the
    time), are still recorded with the browser's user agent by the tracking flush; and
    ``.eml`` copies in the outbox folder (development only) are files, not rows.
    Returns the old status.
    """
    _not_erased(sub)
    was, email, course = sub.status, sub.email, current_course()
    placeholder = erased_address(sub.id)
    cancelled = _cancel_queued(sub, "personal data erased by an admin")
    _scrub_deliveries(sub.id, email, placeholder)
    _scrub_events(sub.id)
    _scrub_webhooks(sub.id, placeholder, course.default_timezone)
    signup.forget_requests(sub.id, email)
    sub.email = placeholder
    sub.name = ""
    sub.consent_ip = ""
    sub.consent_user_agent = ""
    sub.timezone = course.default_timezone
    sub.next_send_at = None
    audit.record(sub.id, "erase", was=was, cancelled=cancelled)
    if was in (Status.PENDING, Status.ACTIVE, Status.PAUSED):
        signup.unsubscribe(sub.id, source="admin")  # commits all of the above
    db.session.commit()
    return was


def _scrub_deliveries(subscriber_id: int, email: str, placeholder: str) -> None:
    """Providers quote the address in refusals ("550 ann@example.com: no such user")."""
    pattern = re.compile(re.escape(email), re.IGNORECASE)
    for delivery in db.session.scalars(db.select(Delivery).where(
            Delivery.subscriber_id == subscriber_id, Delivery.error != "")):
        delivery.error = pattern.sub(placeholder, delivery.error)


def _scrub_events(subscriber_id: int) -> None:
    db.session.execute(
        update(Event).where(_events_of(subscriber_id)).values(user_agent="")
        .execution_options(synchronize_session=False))


def _events_of(subscriber_id: int) -> Any:
    their_deliveries = db.select(Delivery.id).where(Delivery.subscriber_id == subscriber_id)
    return or_(Event.subscriber_id == subscriber_id, Event.delivery_id.in_(their_deliveries))


def _scrub_webhooks(subscriber_id: int, placeholder: str, timezone: str) -> None:
    """Rewrite every outgoing webhook about them; ``emit`` writes ``subscriber`` first."""
    marker = f'"subscriber":{{"id":{subscriber_id},"email":'
    rows = db.session.scalars(db.select(OutgoingWebhook).where(
        OutgoingWebhook.payload.contains(marker, autoescape=True)))
    for row in rows:
        body = json.loads(row.payload)
        data = body.get("data", {})
        data["subscriber"]["email"] = placeholder
        if "name" in data:
            data["name"] = ""
        if "timezone" in data:
            data["timezone"] = timezone
        row.payload = json.dumps(body, separators=(",", ":"), default=str)


def export(sub: Subscriber) -> dict[str, Any]:
    """Everything held about them, for a copy they asked for (the export is audited too).

    Audit entries are listed without the admins' addresses: the file is for the subscriber.
    """
    audit.record(sub.id, "export", deliveries=len(sub.deliveries), events=db.session.scalar(
        db.select(func.count()).select_from(Event).where(_events_of(sub.id))) or 0)
    db.session.flush()
    data = {
        "exported_at": _iso(utcnow()),
        "subscriber": {
            "id": sub.id, "email": sub.email, "name": sub.name, "timezone": sub.timezone,
            "status": sub.status, "next_lesson": sub.next_position,
            "next_send_at": _iso(sub.next_send_at), "created_at": _iso(sub.created_at),
            "confirmed_at": _iso(sub.confirmed_at),
            "unsubscribed_at": _iso(sub.unsubscribed_at),
            "finished_at": _iso(sub.finished_at), "completed_at": _iso(sub.completed_at),
            "erased": is_erased(sub),
        },
        "consent": {"given_at": _iso(sub.consent_at), "ip": sub.consent_ip,
                    "user_agent": sub.consent_user_agent, "form_version": sub.consent_version},
        "deliveries": [_delivery_json(d) for d in sub.deliveries],
        "events": [_event_json(e) for e in db.session.scalars(
            db.select(Event).where(_events_of(sub.id)).order_by(Event.occurred_at, Event.id))],
        "audit": [{"at": _iso(line.created_at), "action": line.action,
                   "what": line.words, "detail": line.detail}
                  for line in audit.entries_for(sub.id)],
    }
    db.session.commit()
    return data


def _delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id, "lesson": d.lesson_slug, "position": d.position, "status": d.status,
        "attempts": d.attempts, "error": d.error, "provider_message_id": d.provider_message_id,
        "scheduled_at": _iso(d.scheduled_at), "sent_at": _iso(d.sent_at),
        "opened_at": _iso(d.opened_at), "opened_by_a_person_at": _iso(d.human_opened_at),
        "opens": d.open_count, "clicked_at": _iso(d.clicked_at), "clicks": d.click_count,
        "completed_at": _iso(d.completed_at),
    }


def _event_json(e: Event) -> dict[str, Any]:
    return {"id": e.id, "delivery_id": e.delivery_id, "kind": e.kind,
            "at": _iso(e.occurred_at), "url": e.url, "machine": e.machine,
            "user_agent": e.user_agent}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None
