"""Signup, confirmation and unsubscription: the subscriber's life cycle, apart from HTTP.

The views call these; each either commits a whole change or none of it. Signup answers
the same way whatever state the address is in, so nobody can learn who is subscribed.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.exc import IntegrityError

from . import queue, webhooks_out
from .content import current_course
from .extensions import db
from .models import Event, EventKind, Status, Subscriber
from .pipeline import cancel_pending
from .schedule import valid_timezone
from .timeutil import utcnow

log = logging.getLogger(__name__)

CONSENT_VERSION = "signup-v2"
NAME_MAX = 100
REJOINABLE = (Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED)


def normalise_email(raw: str, *, check_deliverability: bool = False,
                    allow_test_domains: bool = False) -> str | None:
    """The canonical form of an address (lower-cased), or None if it is not valid.

    ``allow_test_domains`` accepts reserved names such as ``example.test`` (rehearsals).
    """
    raw = (raw or "").strip()
    if not raw or len(raw) > 320 or any(c in raw for c in "\r\n\0"):
        return None
    try:
        info = validate_email(raw, check_deliverability=check_deliverability,
                              test_environment=allow_test_domains)
    except EmailNotValidError:
        return None
    return info.normalized.lower()


def clean_name(raw: str | None) -> str:
    """Strip control and format characters (CR/LF included) and fold white space."""
    text = "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
        for c in (raw or "")
        if unicodedata.category(c) not in ("Cf", "Co", "Cs")
    )
    return " ".join(text.split())


def pick_timezone(raw: str | None) -> str:
    """The browser's IANA zone if it is a real one, else the course's default."""
    raw = (raw or "").strip()
    return raw if valid_timezone(raw) else current_course().default_timezone


@dataclass(frozen=True)
class Consent:
    ip: str
    user_agent: str
    version: str = CONSENT_VERSION


def signup(email: str, name: str, timezone: str, consent: Consent) -> Subscriber | None:
    """Record a signup and send a confirmation if one is due. Same outcome for every caller.

    New and re-joining addresses become pending with fresh consent; a pending one gets a
    fresh confirmation; an active, paused or finished one is left alone.
    """
    now = utcnow()
    sub = db.session.scalar(db.select(Subscriber).where(Subscriber.email == email))
    if sub is None:
        sub = Subscriber(email=email, status=Status.PENDING, next_position=1)
        db.session.add(sub)
    elif sub.status in (Status.ACTIVE, Status.PAUSED, Status.FINISHED):
        return None
    elif sub.status in REJOINABLE:
        sub.status = Status.PENDING
        sub.unsubscribed_at = None
    sub.name = name[:NAME_MAX]
    sub.timezone = timezone
    sub.consent_at = now
    sub.consent_ip = consent.ip[:45]
    sub.consent_user_agent = clean_name(consent.user_agent)[:512]
    sub.consent_version = consent.version
    try:
        db.session.flush()
    except IntegrityError:
        # The same address signing up twice at once: the other request did the work.
        db.session.rollback()
        return None
    db.session.add(Event(subscriber_id=sub.id, kind=EventKind.SIGNUP, occurred_at=now))
    db.session.commit()
    queue.enqueue("workers.tasks.send_confirmation", sub.id)
    return sub


def resend_confirmation(subscriber_id: int) -> bool:
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None or sub.status != Status.PENDING:
        return False
    queue.enqueue("workers.tasks.send_confirmation", sub.id)
    return True


def confirm(subscriber_id: int) -> Subscriber | None:
    """Activate a pending subscriber; the next lesson (lesson 1 for a newcomer) is due now."""
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None:
        return None
    if sub.status != Status.PENDING:
        return sub
    now = utcnow()
    sub.status = Status.ACTIVE
    sub.confirmed_at = now
    sub.next_send_at = now
    db.session.add(Event(subscriber_id=sub.id, kind=EventKind.CONFIRM, occurred_at=now))
    webhooks_out.emit("subscriber.confirmed", webhooks_out.subscriber_data(
        sub.id, sub.email, at=webhooks_out.iso(now), name=sub.name, timezone=sub.timezone))
    db.session.commit()
    try:
        queue.enqueue("workers.tasks.tick", queue_name=queue.TICK_QUEUE, retries=0)
    except Exception:  # the minute tick will pick them up anyway
        log.warning("could not enqueue an immediate tick; the next scheduled tick will send")
    return sub


def unsubscribe(subscriber_id: int, source: str = "link") -> Subscriber | None:
    """Stop all mail to this subscriber at once. Idempotent. ``source`` says who asked
    ("link": the subscriber, "admin": the course owner), for outgoing webhooks."""
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None:
        return None
    if sub.status == Status.UNSUBSCRIBED:
        return sub
    now = utcnow()
    sub.status = Status.UNSUBSCRIBED
    sub.unsubscribed_at = now
    sub.next_send_at = None
    cancel_pending(sub.id)
    db.session.add(Event(subscriber_id=sub.id, kind=EventKind.UNSUBSCRIBE, occurred_at=now))
    webhooks_out.emit("subscriber.unsubscribed", webhooks_out.subscriber_data(
        sub.id, sub.email, at=webhooks_out.iso(now), source=source))
    db.session.commit()
    return sub
