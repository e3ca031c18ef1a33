"""The admin's reads: each one a single SQL query, whatever the number of subscribers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, func

from ..extensions import db
from ..models import Delivery, DeliveryStatus, Status, Subscriber


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


def delivery_problem_counts() -> dict[str, int]:
    """Deliveries that need a person: failed ones, and unknown ones (maybe sent, maybe not)."""
    counts = {DeliveryStatus.FAILED: 0, DeliveryStatus.UNKNOWN: 0}
    rows = db.session.execute(
        db.select(Delivery.status, func.count())
        .where(Delivery.status.in_(list(counts)))
        .group_by(Delivery.status)
    ).all()
    for status, count in rows:
        counts[status] = count
    return counts
