"""Signup, confirmation and unsubscription: the subscriber's life cycle, apart from HTTP.

The views call these; each either commits a whole change or none of it. Signup does the
same work whatever state the address is in (the same rows written, the same job queued),
so neither its answer nor its timing tells who is subscribed. Each signup is its own
``SignupRequest`` with its own nonce: a confirmation link confirms the data of the signup
it was sent for, and nothing else. The rules for addresses and names are here too, so
every way in (the form, the CSV import, the CLI) applies the same ones.
"""

from __future__ import annotations

import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError

from . import queue, tokens, webhooks_out
from .content import current_course
from .extensions import db
from .models import Event, EventKind, SignupRequest, Status, Subscriber
from .pipeline import cancel_pending
from .schedule import valid_timezone
from .timeutil import utcnow

log = logging.getLogger(__name__)

CONSENT_VERSION = "signup-v1"
# A first name, not a sentence: long enough for "Maria del Carmen", too short for a pitch.
NAME_MAX = 50
REJOINABLE = (Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED)
# Confirmation emails one address may be sent in 24 hours, counted in the database (a
# signup form that mails anyone is a way to flood an inbox; Redis may be down or flushed).
CONFIRMATIONS_PER_DAY = 3
SEND_JOB = "workers.tasks.send_confirmation"


class RequestState:
    """``SignupRequest.state``."""

    OWED = "owed"  # a confirmation is sent for it (``sent_at`` says whether it was yet)
    HELD = "held"  # no confirmation: the address is already in, or its day's count is used
    CONFIRMED = "confirmed"
    VOID = "void"  # the subscriber left and joined again, or confirmed another request


# --- addresses and names -------------------------------------------------------------------

INVALID_ADDRESS = "Please enter a valid email address, like name@example.com."
NON_ASCII_LOCAL = (
    "Please use an address with only plain letters (a to z), digits and dots before the @: "
    "we can't send to accented or non-Latin letters there yet."
)
RESERVED_ADDRESS = (
    "That address is reserved for examples and tests and never receives email. "
    "Please enter your own address."
)
# RFC 2606 and RFC 6761 names that never receive mail. In development they are welcome
# (the README's examples use them); in production they are refused.
RESERVED_TLDS = ("test", "example", "invalid", "localhost")
RESERVED_DOMAINS = ("example.com", "example.net", "example.org")


class AddressError(ValueError):
    """An address that cannot be used; ``str()`` is the reason, written for people, and
    ``kind`` says which ("invalid", "non_ascii" or "reserved") for callers that word it
    their own way (the CSV import)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def reserved_domain(domain: str) -> bool:
    domain = domain.lower().rstrip(".")
    return domain.rsplit(".", 1)[-1] in RESERVED_TLDS or any(
        domain == d or domain.endswith("." + d) for d in RESERVED_DOMAINS)


def check_address(raw: str, *, check_deliverability: bool = False,
                  allow_test_domains: bool = False) -> str:
    """The canonical form of an address: lower-cased, its domain in ASCII (IDNA), or
    :class:`AddressError` saying why not.

    A Unicode domain becomes its ``xn--`` form, which every mail system takes. A local part
    (before the @) outside ASCII needs SMTPUTF8 end to end, which we cannot promise, so it
    is refused here with a clear message rather than accepted and never delivered.
    ``allow_test_domains`` accepts reserved names such as ``example.test`` (development);
    without it they are refused, ``example.com`` and its siblings included.
    """
    raw = (raw or "").strip()
    if not raw or len(raw) > 320 or any(c in raw for c in "\r\n\0"):
        raise AddressError(INVALID_ADDRESS, "invalid")
    local = raw.rpartition("@")[0]
    if local and not local.isascii():
        raise AddressError(NON_ASCII_LOCAL, "non_ascii")
    try:
        info = validate_email(raw, check_deliverability=check_deliverability,
                              test_environment=allow_test_domains, allow_smtputf8=False)
    except EmailNotValidError:
        if not allow_test_domains and reserved_domain(raw.rpartition("@")[2]):
            raise AddressError(RESERVED_ADDRESS, "reserved") from None
        raise AddressError(INVALID_ADDRESS, "invalid") from None
    address = (info.ascii_email or info.normalized).lower()
    if not allow_test_domains and reserved_domain(address.rpartition("@")[2]):
        raise AddressError(RESERVED_ADDRESS, "reserved")
    return address


def normalise_email(raw: str, *, check_deliverability: bool = False,
                    allow_test_domains: bool = False) -> str | None:
    """:func:`check_address` for callers that only need yes or no (admin accounts).

    Unlike a subscriber's, an admin's address may be at ``example.com``: it only signs in.
    """
    try:
        address = check_address(raw, check_deliverability=check_deliverability,
                                allow_test_domains=True)
    except AddressError:
        return None
    if not allow_test_domains and address.rpartition(".")[2] in RESERVED_TLDS:
        return None
    return address


def subscriber_address(raw: str) -> str:
    """A subscriber's address under this installation's rules: reserved test domains only
    outside production. Raises :class:`AddressError`. Needs an app context."""
    config = current_app.config
    return check_address(raw, check_deliverability=bool(config["EMAIL_CHECK_DELIVERABILITY"]),
                         allow_test_domains=config["MINICOURSE_ENV"] != "production")


def clean_name(raw: str | None) -> str:
    """Strip control and format characters (CR/LF included) and fold white space."""
    text = "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
        for c in (raw or "")
        if unicodedata.category(c) not in ("Cf", "Co", "Cs")
    )
    return " ".join(text.split())


# Something a mail client would make a link of: a scheme, "www.", an address, or a
# host name such as "pay-here.com" (a dot followed by two or more letters ending a word).
LINK_LIKE = re.compile(r"(?i)(://|\bwww\.|@|[\w-]\.[^\W\d_]{2,}\b)")


def name_problem(name: str) -> str | None:
    """Why a (cleaned) name cannot be used, or None. A name reaches lessons' greetings,
    so it must be a name: short, and without links a reader might follow."""
    if len(name) > NAME_MAX:
        return f"Please keep your name to {NAME_MAX} characters or fewer."
    if LINK_LIKE.search(name):
        return "Please enter just your name, without web or email addresses."
    return None


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
            SignupRequest.state != RequestState.HELD,
        )) or 0)


def _add_request(sub: Subscriber, now: datetime, *, name: str, timezone: str,
                 consent_at: datetime, ip: str, user_agent: str,
                 version: str) -> SignupRequest:
    """A new request for ``sub``: owed a confirmation while pending and under the day's
    count, held otherwise. The count runs on every path, so every path costs the same."""
    under_limit = sent_today(sub.id, now) < CONFIRMATIONS_PER_DAY
    state = (RequestState.OWED if sub.status == Status.PENDING and under_limit
             else RequestState.HELD)
    req = SignupRequest(subscriber_id=sub.id, nonce=new_nonce(), state=state, name=name,
                        timezone=timezone, consent_at=consent_at, consent_ip=ip[:45],
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


def signup(email: str, name: str, timezone: str, consent: Consent) -> SignupRequest | None:
    """Record a signup, and send a confirmation if one is due. The same work for every
    address: a request row, an event and a queued job, whatever the address's state.

    New and re-joining addresses become pending; a pending one gets a fresh confirmation
    (at most ``CONFIRMATIONS_PER_DAY``); an active, paused or finished one is left alone
    (its request is ``held``, and its job finds nothing to send). The subscriber's name,
    time zone and consent change only when a link is confirmed (a new address starts with
    this signup's). The row is saved even when Redis is down.
    """
    now = utcnow()
    sub = db.session.scalar(db.select(Subscriber).where(Subscriber.email == email))
    if sub is None:
        sub = Subscriber(email=email, status=Status.PENDING, next_position=1, name=name,
                         timezone=timezone, consent_at=now, consent_ip=consent.ip[:45],
                         consent_user_agent=clean_name(consent.user_agent)[:512],
                         consent_version=consent.version)
        db.session.add(sub)
        try:
            db.session.flush()
        except IntegrityError:
            # The same address signing up twice at once: the other request did the work.
            db.session.rollback()
            return None
    elif sub.status in REJOINABLE:
        sub.status = Status.PENDING
        sub.unsubscribed_at = None
        _void_requests(sub.id)
    req = _add_request(sub, now, name=name, timezone=timezone, consent_at=now, ip=consent.ip,
                       user_agent=consent.user_agent, version=consent.version)
    db.session.add(Event(subscriber_id=sub.id, kind=EventKind.SIGNUP, occurred_at=now))
    db.session.flush()
    request_id = req.id  # read before the commit expires it, which would cost a query
    db.session.commit()
    enqueue_confirmations([request_id])
    return req


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


def forget_requests(subscriber_id: int) -> None:
    """Erasure: the signups' names, IPs and browsers go with the rest of the personal data
    (the consent of the signup that was confirmed stays on the subscriber, scrubbed there)."""
    db.session.execute(db.delete(SignupRequest).where(
        SignupRequest.subscriber_id == subscriber_id))
