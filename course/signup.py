"""Signup, confirmation and unsubscription: the subscriber's life cycle, apart from HTTP.

The views call these; each either commits a whole change or none of it. A signup's web
request writes one ``SignupRequest`` row and queues one job, whatever the address, so
neither its answer nor its timing can tell who is subscribed; the job (:func:`handle`)
finds or creates the subscriber and decides whether a confirmation is due. Each signup has
its own nonce: a confirmation link confirms the data of the signup it was sent for, and
nothing else. The rules for addresses and names are in ``course/signup_input.py``.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis.exceptions import RedisError
from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError

from . import queue, tokens, webhooks_out
from .content import current_course
from .extensions import db
from .models import Event, EventKind, SignupRequest, Status, Subscriber
from .pipeline import cancel_pending
from .schedule import valid_timezone
from .signup_input import NAME_MAX as NAME_MAX
from .signup_input import clean_name
from .signup_input import normalise_email as normalise_email
from .timeutil import utcnow

log = logging.getLogger(__name__)

CONSENT_VERSION = "signup-v2"
REJOINABLE = (Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED)
# Confirmation emails one address may be sent in 24 hours, counted in the database (a
# signup form that mails anyone is a way to flood an inbox; Redis may be down or flushed).
CONFIRMATIONS_PER_DAY = 3
SEND_JOB = "workers.tasks.send_confirmation"


class RequestState:
    """``SignupRequest.state``."""

    NEW = "new"  # recorded by the web request, not handled by a job yet
    OWED = "owed"  # a confirmation is sent for it (``sent_at`` says whether it was yet)
    HELD = "held"  # no confirmation: the address is already in, or its day's count is used
    CONFIRMED = "confirmed"
    VOID = "void"  # the subscriber left and joined again, or confirmed another request


def pick_timezone(raw: str | None) -> str:
    """The browser's IANA zone if it is a real one, else the course's default."""
    raw = (raw or "").strip()
    return raw if valid_timezone(raw) else current_course().default_timezone


@dataclass(frozen=True)
class Consent:
    ip: str
    user_agent: str
    version: str = CONSENT_VERSION


# --- signup --------------------------------------------------------------------------------


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def confirmation_token(req: SignupRequest) -> str:
    """The signed confirm-link token: the subscriber and the nonce of this request."""
    return tokens.make("confirm", {"s": req.subscriber_id, "n": req.nonce})


def sent_today(subscriber_id: int, now: datetime) -> int:
    """Confirmations sent or owed to this subscriber in the last 24 hours."""
    return int(db.session.scalar(
        db.select(func.count()).select_from(SignupRequest).where(
            SignupRequest.subscriber_id == subscriber_id,
            SignupRequest.created_at > now - timedelta(days=1),
            (SignupRequest.state == RequestState.OWED) | SignupRequest.sent_at.is_not(None),
        )) or 0)


def _state_for(sub: Subscriber, now: datetime) -> str:
    """Owed a confirmation while pending and under the day's count; held otherwise."""
    if sub.status == Status.PENDING and sent_today(sub.id, now) < CONFIRMATIONS_PER_DAY:
        return RequestState.OWED
    return RequestState.HELD


def _add_request(sub: Subscriber, now: datetime, *, name: str, timezone: str,
                 consent_at: datetime, ip: str, user_agent: str,
                 version: str) -> SignupRequest:
    """A request for a known subscriber (a resend, an import), its state decided now."""
    req = SignupRequest(email=sub.email, subscriber_id=sub.id, nonce=new_nonce(),
                        state=_state_for(sub, now), name=name, timezone=timezone,
                        consent_at=consent_at, consent_ip=ip[:45],
                        consent_user_agent=clean_name(user_agent)[:512],
                        consent_version=version, created_at=now, queued_at=now, attempts=0)
    db.session.add(req)
    return req


def _void_requests(subscriber_id: int, keep: int | None = None) -> None:
    """Earlier links stop working: after a rejoin, or once one of them was confirmed."""
    stmt = (update(SignupRequest)
            .where(SignupRequest.subscriber_id == subscriber_id,
                   SignupRequest.state.in_([RequestState.OWED, RequestState.HELD]))
            .values(state=RequestState.VOID)
            .execution_options(synchronize_session=False))
    if keep is not None:
        stmt = stmt.where(SignupRequest.id != keep)
    db.session.execute(stmt)


def enqueue_confirmations(request_ids: list[int]) -> bool:
    """Queue a send job per request. If Redis does not answer, the requests are marked
    not queued and ``course.confirmations.send_owed`` (run by cron) sends them later."""
    try:
        for request_id in request_ids:
            queue.enqueue(SEND_JOB, request_id)
    except (RedisError, OSError) as exc:
        log.warning("could not queue %d confirmation(s), the cron will send them: %s",
                    len(request_ids), exc)
        db.session.execute(
            update(SignupRequest).where(SignupRequest.id.in_(request_ids),
                                        SignupRequest.sent_at.is_(None))
            .values(queued_at=None).execution_options(synchronize_session=False))
        db.session.commit()
        return False
    return True


def signup(email: str, name: str, timezone: str, consent: Consent) -> SignupRequest:
    """Record a signup and queue the job that handles it: one row, one job, and no look at
    the address's state, so every address costs the same. Saved even when Redis is down
    (the cron queues the job later: ``course.confirmations.send_owed``)."""
    now = utcnow()
    req = SignupRequest(email=email, nonce=new_nonce(), state=RequestState.NEW, name=name,
                        timezone=timezone, consent_at=now, consent_ip=consent.ip[:45],
                        consent_user_agent=clean_name(consent.user_agent)[:512],
                        consent_version=consent.version, created_at=now, queued_at=now,
                        attempts=0)
    db.session.add(req)
    db.session.flush()
    request_id = req.id  # read before the commit expires it, which would cost a query
    db.session.commit()
    enqueue_confirmations([request_id])
    return req


def handle(request_id: int) -> SignupRequest | None:
    """What a signup does, run by its job: the same outcome for every caller.

    A new address becomes pending with this signup's data; a re-joining one becomes pending
    again, its older links void; a pending one gets a fresh confirmation (at most
    ``CONFIRMATIONS_PER_DAY``); an active, paused or finished one is left alone (the request
    is ``held``). A known subscriber's name, time zone and consent change only when a link
    is confirmed. Returns the request, or None if it was handled already.
    """
    req = db.session.scalar(db.select(SignupRequest).where(SignupRequest.id == request_id)
                            .with_for_update())
    if req is None or req.state != RequestState.NEW:
        db.session.rollback()
        return None
    now = utcnow()
    sub = _subscriber_for(req)
    if sub.status in REJOINABLE:
        sub.status = Status.PENDING
        sub.unsubscribed_at = None
        _void_requests(sub.id)
    req.state = _state_for(sub, now)
    req.subscriber_id = sub.id
    db.session.add(Event(subscriber_id=sub.id, kind=EventKind.SIGNUP,
                         occurred_at=req.created_at))
    db.session.commit()
    return req


def _subscriber_for(req: SignupRequest) -> Subscriber:
    """The subscriber with the request's address, created pending with its data if new."""
    find = db.select(Subscriber).where(Subscriber.email == req.email).with_for_update()
    sub = db.session.scalar(find)
    if sub is not None:
        return sub
    sub = Subscriber(email=req.email, status=Status.PENDING, next_position=1, name=req.name,
                     timezone=req.timezone, consent_at=req.consent_at,
                     consent_ip=req.consent_ip, consent_user_agent=req.consent_user_agent,
                     consent_version=req.consent_version)
    try:
        with db.session.begin_nested():
            db.session.add(sub)
    except IntegrityError:
        # Another job created it a moment ago (the same address signed up twice at once).
        found = db.session.scalar(find)
        if found is None:
            raise
        return found
    return sub


def request_confirmations(subscriber_ids: list[int]) -> int:
    """Ask pending subscribers (an import's) to confirm, each with their current data.
    Returns how many confirmations were queued or left for the cron to send."""
    now = utcnow()
    requests = []
    for sub in db.session.scalars(db.select(Subscriber).where(
            Subscriber.id.in_(subscriber_ids), Subscriber.status == Status.PENDING)):
        requests.append(_add_request(
            sub, now, name=sub.name, timezone=sub.timezone,
            consent_at=sub.consent_at or now, ip=sub.consent_ip,
            user_agent=sub.consent_user_agent, version=sub.consent_version))
    db.session.commit()
    owed = [r.id for r in requests if r.state == RequestState.OWED]
    if owed:
        enqueue_confirmations(owed)
    return len(owed)


def find_request(subscriber_id: int, nonce: str) -> SignupRequest | None:
    return db.session.scalar(
        db.select(SignupRequest).where(SignupRequest.subscriber_id == subscriber_id,
                                       SignupRequest.nonce == nonce)
        .order_by(SignupRequest.id.desc()).limit(1))


def can_resend(subscriber_id: int, nonce: str) -> bool:
    """A new link can replace this one: it is still the subscriber's, and they still wait."""
    sub = db.session.get(Subscriber, subscriber_id)
    req = find_request(subscriber_id, nonce)
    return (sub is not None and sub.status == Status.PENDING and req is not None
            and req.state == RequestState.OWED)


def resend_confirmation(subscriber_id: int, nonce: str) -> SignupRequest | None:
    """A fresh link for the same signup (an expired one's): a new request with its data."""
    if not can_resend(subscriber_id, nonce):
        return None
    old = find_request(subscriber_id, nonce)
    sub = db.session.get(Subscriber, subscriber_id)
    assert old is not None and sub is not None
    req = _add_request(sub, utcnow(), name=old.name, timezone=old.timezone,
                       consent_at=old.consent_at, ip=old.consent_ip,
                       user_agent=old.consent_user_agent, version=old.consent_version)
    db.session.commit()
    if req.state == RequestState.OWED:
        enqueue_confirmations([req.id])
    return req


def confirm(subscriber_id: int, nonce: str) -> Subscriber | None:
    """Activate a pending subscriber with the data of the signup this link was sent for;
    the next lesson (lesson 1 for a newcomer) is due now.

    A link of any other signup (voided by a rejoin, or never sent) leaves them pending.
    """
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None:
        return None
    if sub.status != Status.PENDING:
        return sub
    req = find_request(subscriber_id, nonce)
    if req is None or req.state != RequestState.OWED:
        return sub
    now = utcnow()
    sub.name = req.name
    sub.timezone = req.timezone
    sub.consent_at = req.consent_at
    sub.consent_ip = req.consent_ip
    sub.consent_user_agent = req.consent_user_agent
    sub.consent_version = req.consent_version
    req.state = RequestState.CONFIRMED
    req.confirmed_at = now
    _void_requests(sub.id, keep=req.id)
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
    _void_requests(sub.id)
    db.session.add(Event(subscriber_id=sub.id, kind=EventKind.UNSUBSCRIBE, occurred_at=now))
    webhooks_out.emit("subscriber.unsubscribed", webhooks_out.subscriber_data(
        sub.id, sub.email, at=webhooks_out.iso(now), source=source))
    db.session.commit()
    return sub


def forget_requests(subscriber_id: int, email: str) -> None:
    """Erasure: the signups' addresses, names, IPs and browsers go with the rest of the
    personal data (the consent of the signup that was confirmed stays on the subscriber,
    scrubbed there). A signup of the address not handled yet goes too."""
    db.session.execute(db.delete(SignupRequest).where(
        (SignupRequest.subscriber_id == subscriber_id) | (SignupRequest.email == email)))
