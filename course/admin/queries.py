"""The admin's reads: each one a single SQL query, whatever the number of subscribers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, Select, and_, func, or_
from sqlalchemy.orm import joinedload

from ..extensions import db
from ..models import Delivery, DeliveryStatus, Status, Subscriber
from ..timeutil import utcnow

# A delivery claimed this long ago and still "sending" was left by a worker that stopped
# (a send job is killed after 10 minutes); the same cut-off as ``sending.stuck_sending``.
STUCK_AFTER = timedelta(minutes=10)
# What the deliveries page lists, in this order: each needs a person to decide.
ATTENTION = (DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN, DeliveryStatus.SENDING)
# Deliveries that may already be in the subscriber's inbox: resent only on confirmation.
MAYBE_DELIVERED = (DeliveryStatus.UNKNOWN, DeliveryStatus.SENDING)
# Primary keys are 32-bit integers; larger ids in a URL or form are simply not found
# (SQLite cannot even bind integers past 64 bits).
MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class Progress:
    """Lessons sent, opened and marked done by one subscriber."""

    sent: int = 0
    opened: int = 0
    done: int = 0


def escape_like(text: str) -> str:
    """Make ``%`` and ``_`` in a search literal, so they match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def subscriber_query(search: str = "", status: str = "") -> Select[tuple[Subscriber]]:
    """Subscribers whose email contains ``search`` (any case), optionally in one status."""
    stmt = db.select(Subscriber)
    if search:
        stmt = stmt.where(Subscriber.email.ilike(f"%{escape_like(search)}%", escape="\\"))
    if status in Status.ALL:
        stmt = stmt.where(Subscriber.status == status)
    return stmt.order_by(Subscriber.created_at.desc(), Subscriber.id.desc())


def progress_for(subscriber_ids: Sequence[int]) -> dict[int, Progress]:
    """Sent / opened / done counts for a page of subscribers in one aggregate query."""
    if not subscriber_ids:
        return {}
    rows = db.session.execute(
        db.select(
            Delivery.subscriber_id,
            func.count(Delivery.sent_at),
            func.count(Delivery.opened_at),
            func.count(Delivery.completed_at),
        )
        .where(Delivery.subscriber_id.in_(list(subscriber_ids)))
        .group_by(Delivery.subscriber_id)
    ).all()
    return {sid: Progress(sent, opened, done) for sid, sent, opened, done in rows}


def status_counts() -> dict[str, int]:
    """How many subscribers are in each status (every status listed, zeros included)."""
    counts = dict.fromkeys(Status.ALL, 0)
    rows = db.session.execute(
        db.select(Subscriber.status, func.count()).group_by(Subscriber.status)
    ).all()
    for status, count in rows:
        counts[status] = count
    return counts


def needs_attention(status: str = "") -> ColumnElement[bool]:
    """Failed, unknown, or stuck sending (all of them, or those in ``status`` only)."""
    stuck = and_(Delivery.status == DeliveryStatus.SENDING,
                 Delivery.claimed_at < utcnow() - STUCK_AFTER)
    if status == DeliveryStatus.SENDING:
        return stuck
    if status in ATTENTION:
        return Delivery.status == status
    return or_(Delivery.status.in_([DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN]), stuck)


def attention_query(status: str = "") -> Select[tuple[Delivery]]:
    """Deliveries needing a person, the most recent attempt first, with their subscriber."""
    when = func.coalesce(Delivery.claimed_at, Delivery.created_at)
    return (
        db.select(Delivery)
        .options(joinedload(Delivery.subscriber))
        .where(needs_attention(status))
        .order_by(when.desc(), Delivery.id.desc())
    )


def attention_counts() -> dict[str, int]:
    """How many deliveries need a person, per status in ``ATTENTION`` (zeros included)."""
    counts = dict.fromkeys(ATTENTION, 0)
    rows = db.session.execute(
        db.select(Delivery.status, func.count())
        .where(needs_attention())
        .group_by(Delivery.status)
    ).all()
    for status, count in rows:
        counts[status] = count
    return counts


def resendable(ids: Iterable[int]) -> dict[int, str]:
    """Of ``ids``, the deliveries an admin may resend now, with their status.

    Only failed, unknown and *stuck* sending ones: a delivery a worker is sending right
    now must not be requeued, or it could go out twice.
    """
    wanted = sorted({i for i in ids if 0 < i <= MAX_ID})
    if not wanted:
        return {}
    rows = db.session.execute(
        db.select(Delivery.id, Delivery.status)
        .where(Delivery.id.in_(wanted), needs_attention())
    ).all()
    return {delivery_id: status for delivery_id, status in rows}
