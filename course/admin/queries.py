"""The admin's reads: each one a single SQL query, whatever the number of subscribers."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, func, or_, text, tuple_
from sqlalchemy.orm import InstrumentedAttribute, joinedload

from ..extensions import db
from ..ids import DB_ID_MAX
from ..models import Delivery, DeliveryStatus, Status, Subscriber, SubscriberSearch
from ..rehearsal import real_subscribers
from ..timeutil import utcnow
from ..tracking_stats import count_opened

# A delivery claimed this long ago and still "sending" was left by a worker that stopped
# (a send job is killed after 10 minutes); the same cut-off as ``sending.stuck_sending``.
STUCK_AFTER = timedelta(minutes=10)
# What the deliveries page lists, in this order: each needs a person to decide.
ATTENTION = (DeliveryStatus.FAILED, DeliveryStatus.UNCONFIRMED, DeliveryStatus.SENDING)
# Deliveries that may already be in the subscriber's inbox: resent only on confirmation.
MAYBE_DELIVERED = (DeliveryStatus.UNCONFIRMED, DeliveryStatus.SENDING)
# Primary keys are 32-bit integers; larger ids in a URL or form are simply not found.
MAX_ID = DB_ID_MAX


@dataclass(frozen=True)
class Progress:
    """Lessons sent, opened (by a person, or done), clicked and marked done by one
    subscriber: the definitions of ``course.tracking_stats``, as on every admin page."""

    sent: int = 0
    opened: int = 0
    done: int = 0
    clicked: int = 0


def escape_like(text: str) -> str:
    """Make ``%`` and ``_`` in a search literal, so they match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- the subscribers list ----------------------------------------------------------------
#
# Fast at a million subscribers: pages are continued from the last row shown (keyset
# pagination, one index range scan however deep), the total is counted only up to
# COUNT_CAP, and "contains" searches use trigram indexes on PostgreSQL (migration 0005).

# Sort orders: name -> (label, key columns, descending). Each key ends in a unique column,
# so the order is total, and its columns all run one way, so a single row comparison
# continues it from any row. Each has a matching index (see the Subscriber model).
SORTS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "newest": ("Joined, newest first", ("created_at", "id"), True),
    "oldest": ("Joined, oldest first", ("created_at", "id"), False),
    "email": ("Email, A to Z", ("email",), False),
    "progress": ("Furthest along first", ("next_position", "id"), True),
    "progress_asc": ("Least far along first", ("next_position", "id"), False),
}
DEFAULT_SORT = "newest"
# Totals past this are shown as "more than 10,000": counting a million rows on every page
# view would cost more than the page itself.
COUNT_CAP = 10_000
# Plain page numbers (``?page=N`` without a row to continue from) reach this many rows deep;
# further pages are reached with "Next", which costs the same at any depth.
MAX_OFFSET = COUNT_CAP
# Status counts of a large list are recounted at most this often (per web process).
COUNTS_TTL = 60.0
EXACT_COUNTS_BELOW = 100_000


@dataclass(frozen=True)
class SubscriberFilter:
    """What the admin narrowed the list to; empty fields match everyone."""

    search: str = ""  # part of the email or the name, any case
    status: str = ""
    lesson: int | None = None  # the position of the subscriber's next lesson

    @property
    def active(self) -> bool:
        return bool(self.search or self.status or self.lesson)

    def conditions(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.search:
            # Looked up in the trigger-kept copy (see ``SubscriberSearch``), whose trigram
            # indexes answer it on PostgreSQL.
            pattern = f"%{escape_like(self.search)}%"
            out.append(Subscriber.id.in_(
                db.select(SubscriberSearch.subscriber_id).where(or_(
                    SubscriberSearch.email.ilike(pattern, escape="\\"),
                    SubscriberSearch.name.ilike(pattern, escape="\\")))))
        if self.status in Status.ALL:
            out.append(Subscriber.status == self.status)
        if self.lesson is not None:
            out.append(Subscriber.next_position == self.lesson)
        return out


@dataclass
class SubscriberPage:
    """One page of the list and the rows to continue from in each direction."""

    rows: list[Subscriber] = field(default_factory=list)
    next_after: int | None = None  # continue after this subscriber for the next page
    prev_before: int | None = None  # or before this one for the previous page
    anchor_found: bool = True  # False when the row to continue from no longer exists


def _sort_columns(sort: str) -> tuple[list[InstrumentedAttribute[Any]], bool]:
    _, names, descending = SORTS.get(sort, SORTS[DEFAULT_SORT])
    return [getattr(Subscriber, n) for n in names], descending


def _beyond(sort: str, anchor_id: int, forward: bool,
            keys: Sequence[ColumnElement[Any]]) -> ColumnElement[bool] | None:
    """Rows after (``forward``) or before the subscriber ``anchor_id`` in this sort order,
    compared on ``keys`` (the sort columns, or their copies in a CTE); None when that
    subscriber does not exist (any more)."""
    columns, descending = _sort_columns(sort)
    values = db.session.execute(db.select(*columns).where(Subscriber.id == anchor_id)).first()
    if values is None:
        return None
    row = tuple_(*keys)
    anchor = tuple_(*[bindparam(None, v, type_=c.type) for c, v in zip(columns, values,
                                                                         strict=True)])
    return row < anchor if descending == forward else row > anchor


def subscriber_page(filters: SubscriberFilter, sort: str, per_page: int,
                    after: int | None = None, before: int | None = None,
                    offset: int = 0, few: bool = False) -> SubscriberPage:
    """A page of subscribers: the first, one continued after or before a given subscriber
    (keyset pagination), or, for small page numbers, ``offset`` rows in.

    ``few`` says at most COUNT_CAP subscribers match. PostgreSQL then takes them all
    through the filters' own indexes and sorts them, rather than walking an index in sort
    order: its planner assumes matches are spread evenly along that order, and when they
    are not ("finished" and "lesson 3" never meet) the walk reads the whole table.
    """
    columns, descending = _sort_columns(sort)
    forward = before is None
    keys: list[ColumnElement[Any]] = [c.expression for c in columns]
    if few and db.engine.dialect.name == "postgresql":
        wanted = list(dict.fromkeys([Subscriber.id, *columns]))
        matching = (db.select(*wanted).where(*filters.conditions())
                    .cte("matching").prefix_with("MATERIALIZED"))
        keys = [matching.c[c.key] for c in columns]
        stmt = db.select(matching.c.id)
    else:
        stmt = db.select(Subscriber.id).where(*filters.conditions())
    anchor = after if forward else before
    if anchor is not None:
        beyond = _beyond(sort, anchor, forward, keys)
        if beyond is None:
            return SubscriberPage(anchor_found=False)
        stmt = stmt.where(beyond)
    elif offset:
        stmt = stmt.offset(offset)
    # Read backwards (and flip the rows) to reach the previous page.
    stmt = stmt.order_by(*[k.desc() if descending == forward else k.asc() for k in keys])
    ids = list(db.session.scalars(stmt.limit(per_page + 1)))
    more = len(ids) > per_page
    ids = ids[:per_page]
    if not forward:
        ids.reverse()
    loaded = {s.id: s for s in db.session.scalars(
        db.select(Subscriber).where(Subscriber.id.in_(ids)))} if ids else {}
    rows = [loaded[i] for i in ids if i in loaded]
    page = SubscriberPage(rows=rows)
    if rows:
        if more or not forward:
            page.next_after = rows[-1].id
        if anchor is not None or offset:
            if more or forward:
                page.prev_before = rows[0].id
    return page


def count_matching(filters: SubscriberFilter, cap: int = COUNT_CAP) -> int:
    """How many subscribers match, counted up to ``cap + 1`` (more means "more than cap")."""
    matching = db.select(Subscriber.id).where(*filters.conditions()).limit(cap + 1).subquery()
    return int(db.session.scalar(db.select(func.count()).select_from(matching)) or 0)


_counts_cache: dict[str, tuple[float, dict[str, int]]] = {}


def recent_status_counts() -> tuple[dict[str, int], datetime | None]:
    """Subscribers per status, and when they were counted if not just now.

    Exact on every call for lists under EXACT_COUNTS_BELOW subscribers; a larger list on
    PostgreSQL is recounted at most every COUNTS_TTL seconds, since grouping a million
    rows takes longer than the rest of the page.
    """
    if db.engine.dialect.name != "postgresql" or _estimated_subscribers() < EXACT_COUNTS_BELOW:
        return status_counts(), None
    key = db.engine.url.render_as_string(hide_password=True)
    now = time.time()
    cached = _counts_cache.get(key)
    if cached is None or now - cached[0] > COUNTS_TTL:
        cached = (now, status_counts())
        _counts_cache[key] = cached
    return cached[1], datetime.fromtimestamp(cached[0], UTC)


def _estimated_subscribers() -> int:
    """PostgreSQL's own estimate of the table's size (kept by ANALYZE and autovacuum)."""
    estimate = db.session.scalar(
        text("SELECT reltuples FROM pg_class WHERE oid = 'subscriber'::regclass"))
    return int(estimate or 0)


def progress_for(subscriber_ids: Sequence[int]) -> dict[int, Progress]:
    """Sent / opened / done / clicked counts for a page of subscribers in one aggregate
    query (through ``ix_delivery_subscriber_id``)."""
    if not subscriber_ids:
        return {}
    rows = db.session.execute(
        db.select(
            Delivery.subscriber_id,
            func.count(Delivery.sent_at),
            count_opened(),
            func.count(Delivery.completed_at),
            func.count(Delivery.clicked_at),
        )
        .where(Delivery.subscriber_id.in_(list(subscriber_ids)))
        .group_by(Delivery.subscriber_id)
    ).all()
    return {sid: Progress(sent, int(opened), done, clicked)
            for sid, sent, opened, done, clicked in rows}


def status_counts() -> dict[str, int]:
    """How many subscribers are in each status (every status listed, zeros included)."""
    counts = dict.fromkeys(Status.ALL, 0)
    rows = db.session.execute(
        db.select(Subscriber.status, func.count()).where(real_subscribers())
        .group_by(Subscriber.status)
    ).all()
    for status, count in rows:
        counts[status] = count
    return counts


def needs_attention(status: str = "") -> ColumnElement[bool]:
    """Failed, unconfirmed, or stuck sending (all of them, or those in ``status`` only)."""
    stuck = and_(Delivery.status == DeliveryStatus.SENDING,
                 Delivery.claimed_at < utcnow() - STUCK_AFTER)
    if status == DeliveryStatus.SENDING:
        return stuck
    if status in ATTENTION:
        return Delivery.status == status
    return or_(Delivery.status.in_([DeliveryStatus.FAILED, DeliveryStatus.UNCONFIRMED]), stuck)


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

    Only failed, unconfirmed and *stuck* sending ones: a delivery a worker is sending
    right now must not be requeued, or it could go out twice.
    """
    wanted = sorted({i for i in ids if 0 < i <= MAX_ID})
    if not wanted:
        return {}
    rows = db.session.execute(
        db.select(Delivery.id, Delivery.status)
        .where(Delivery.id.in_(wanted), needs_attention())
    ).all()
    return {delivery_id: status for delivery_id, status in rows}
