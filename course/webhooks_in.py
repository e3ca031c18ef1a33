"""``POST /webhooks/sendgrid``: SendGrid's Event Webhook, signed, applied in bulk.

SendGrid posts up to thousands of events at once and retries for a day on anything but a
2xx, so a batch is applied in a handful of statements whatever its size, and a replayed
batch changes nothing (see :mod:`course.sendgrid_events` for the dedup key).

A hard bounce, a spam report or an unsubscribe stops all mail to the subscriber before
the answer goes back: status set, nothing due, queued deliveries cancelled, committed.

Who may post: with ``SENDGRID_WEBHOOK_PUBLIC_KEY`` set, only SendGrid (a valid, fresh
signature); without it, anyone in development, and nobody in production unless
``SENDGRID_WEBHOOK_ALLOW_UNSIGNED=1`` (production with the SendGrid backend refuses to
start without either; see ``course.config``).

What may be posted: at most ``SENDGRID_WEBHOOK_MAX_BYTES`` (413 past it, chunked or not), a
JSON array of events nested no deeper than ``MAX_DEPTH``, every string valid Unicode (a
lone surrogate cannot be stored in either database); anything else is a 400, signed or
not. An id out of range for our columns is not ours, like any malformed one
(``course.ids``), so it never reaches the database.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from . import sendgrid_events as sg
from . import unconfirmed, webhooks_out
from .extensions import csrf, db, limiter
from .models import Delivery, DeliveryStatus, Event, EventKind, Status, Subscriber
from .timeutil import utcnow

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)

CHUNK = 1000  # rows per INSERT and ids per IN (well under SQLite's parameter limit)
# The array, an event, and a value in it such as SendGrid's "pool" object or "category"
# list, with room to spare; past it the body is not SendGrid's.
MAX_DEPTH = 8
# A \uD800-\uDFFF escape: the only way JSON decoded from UTF-8 can hold a surrogate.
SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")
WEBHOOK_TYPE = {Status.BOUNCED: "subscriber.bounced", Status.COMPLAINED: "subscriber.complained",
                Status.UNSUBSCRIBED: "subscriber.unsubscribed"}


@bp.before_request
def allow_big_bodies() -> None:
    """SendGrid batches run to megabytes; every other endpoint keeps the small limit."""
    request.max_content_length = current_app.config["SENDGRID_WEBHOOK_MAX_BYTES"]


@bp.route("/sendgrid", methods=["POST"])
@csrf.exempt
@limiter.exempt
def sendgrid() -> ResponseReturnValue:
    body = request.get_data(cache=False)
    refusal = _refusal(body)
    if refusal:
        log.warning("SendGrid webhook refused from %s: %s", request.remote_addr, refusal)
        return jsonify(error=refusal), 403
    try:
        raw = read_events(body)
    except sg.BadPayload as exc:
        return jsonify(error=str(exc)), 400
    try:
        counts = apply_events(raw)
    except SQLAlchemyError:
        db.session.rollback()
        log.exception("could not record a SendGrid batch of %d events", len(raw))
        return jsonify(error="could not record the events; try again"), 503
    return jsonify(counts), 200


def _refusal(body: bytes) -> str | None:
    """Why this request may not post events, or None."""
    config = current_app.config
    if not config["SENDGRID_WEBHOOK_PUBLIC_KEY"]:
        if config["MINICOURSE_ENV"] == "production" and \
                not config["SENDGRID_WEBHOOK_ALLOW_UNSIGNED"]:
            return "no SENDGRID_WEBHOOK_PUBLIC_KEY is configured"
        return None
    key = current_app.extensions.get("minicourse_sendgrid_key")
    if key is None:
        key = sg.load_public_key(config["SENDGRID_WEBHOOK_PUBLIC_KEY"])
        current_app.extensions["minicourse_sendgrid_key"] = key
    return sg.check_signature(
        key, body, request.headers.get(sg.SIGNATURE_HEADER),
        request.headers.get(sg.TIMESTAMP_HEADER), utcnow().timestamp(),
        int(config["SENDGRID_WEBHOOK_MAX_AGE"]),
    )


def read_events(body: bytes) -> list[Any]:
    """The posted array of events, or :class:`~course.sendgrid_events.BadPayload` saying
    what is wrong with its shape."""
    try:
        text = body.decode("utf-8")  # JSON between systems is UTF-8 (RFC 8259), nothing else
        events = json.loads(text)
    except UnicodeDecodeError:
        raise sg.BadPayload("the body is not UTF-8") from None
    except RecursionError:  # json gives up on nesting deeper than Python's stack
        raise sg.BadPayload(f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise sg.BadPayload("the body is not JSON") from None
    if not isinstance(events, list):
        raise sg.BadPayload("the body is not a JSON array of events")
    if not _depth_within(events, MAX_DEPTH):
        raise sg.BadPayload(f"the body is nested deeper than {MAX_DEPTH} levels")
    if SURROGATE_ESCAPE_RE.search(text):
        # Escaped pairs (an emoji) decode to one character; only lone halves remain.
        try:
            json.dumps(events, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise sg.BadPayload("the body holds a string that is not valid Unicode "
                                "(a lone surrogate)") from None
    return events


def _depth_within(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects at most ``limit`` levels (itself one)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return True


class Recipient(NamedTuple):
    subscriber_id: int
    email: str
    status: str
    consent_at: datetime | None


@dataclass
class Batch:
    """A batch's events resolved to our rows, and what they add up to."""

    received: int
    resolved: list[tuple[sg.SGEvent, int, int | None]] = field(default_factory=list)
    subscribers: dict[int, Recipient] = field(default_factory=dict)
    deliveries: dict[int, Any] = field(default_factory=dict)


def _chunks(items: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def apply_events(raw: list[Any]) -> dict[str, int]:
    """Record every event we can place, apply what it means, commit once."""
    batch = _resolve(raw)
    recorded = _insert_events(batch)
    _record_engagement(batch)
    _record_problems(batch)
    stopped = _stop_mail(batch)
    # The events are the provider's ledger: they settle unconfirmed lessons.
    unconfirmed.after_events(batch.deliveries.values(), utcnow())
    db.session.commit()
    return {"received": batch.received, "recorded": recorded,
            "ignored": batch.received - len(batch.resolved), "stopped": stopped}


def _resolve(raw: list[Any]) -> Batch:
    """Each event to (subscriber, delivery): by our delivery id, else, for facts about the
    address (bounces, drops), by email. A delivery id whose recipient does not match the
    event's address (a database reset since) is not trusted. Unplaceable events (another
    application on the same SendGrid account) are ignored."""
    batch = Batch(received=len(raw))
    events = [e for e in map(sg.parse_event, raw) if e is not None]
    ids = sorted({e.delivery_id for e in events if e.delivery_id is not None})
    for chunk in _chunks(ids, 5 * CHUNK):
        for row in db.session.execute(
            select(Delivery.id, Delivery.subscriber_id, Delivery.lesson_slug,
                   Delivery.position, Delivery.status, Delivery.human_opened_at,
                   Delivery.request_id,
                   Subscriber.email, Subscriber.status.label("subscriber_status"),
                   Subscriber.consent_at)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.id.in_(chunk))
        ):
            batch.deliveries[row.id] = row
            batch.subscribers[row.subscriber_id] = Recipient(
                row.subscriber_id, row.email, row.subscriber_status, row.consent_at)
    unplaced: list[sg.SGEvent] = []
    for e in events:
        d = batch.deliveries.get(e.delivery_id) if e.delivery_id is not None else None
        if d is not None and (not e.email or e.email == d.email.lower()):
            batch.resolved.append((e, d.subscriber_id, d.id))
        elif e.kind in sg.BY_EMAIL_OK and e.email:
            unplaced.append(e)
    by_email = _subscribers_by_email({e.email for e in unplaced})
    for e in unplaced:
        found = by_email.get(e.email)
        if found is not None:
            batch.subscribers.setdefault(found.subscriber_id, found)
            batch.resolved.append((e, found.subscriber_id, None))
    return batch


def _subscribers_by_email(emails: Iterable[str]) -> dict[str, Recipient]:
    found: dict[str, Recipient] = {}
    for chunk in _chunks(sorted(emails), 5 * CHUNK):
        for row in db.session.execute(
            select(Subscriber.id, Subscriber.email, Subscriber.status, Subscriber.consent_at)
            .where(Subscriber.email.in_(chunk))  # stored normalised, lower-case
        ):
            found[row.email] = Recipient(*row)
    return found


def _insert(table: Table) -> Any:
    return pg_insert(table) if db.engine.dialect.name == "postgresql" else sqlite_insert(table)


def _insert_events(batch: Batch) -> int:
    """One Event per provider event; a key seen before (a replay) inserts nothing."""
    rows = {
        e.key: {"subscriber_id": sub_id, "delivery_id": delivery_id, "kind": e.kind,
                "occurred_at": e.occurred_at, "url": e.url, "machine": e.machine,
                "user_agent": e.user_agent, "provider_event_id": e.key}
        for e, sub_id, delivery_id in batch.resolved
    }
    if not rows:
        return 0
    if db.engine.dialect.name == "postgresql":
        return _insert_events_pg(list(rows.values()))
    table = cast(Table, Event.__table__)
    # Core executemany: SQLAlchemy batches it into multi-row INSERTs compiled once.
    return len(db.session.execute(
        _insert(table).on_conflict_do_nothing(index_elements=["provider_event_id"])
        .returning(table.c.id),
        list(rows.values()),
    ).all())


# One statement, one array per column: a 10,000-row multi-VALUES INSERT spends longer
# having its placeholders rewritten by the driver than PostgreSQL spends inserting.
PG_INSERT_EVENTS = text("""
    INSERT INTO event (subscriber_id, delivery_id, kind, occurred_at, url, machine,
                       user_agent, provider_event_id)
    SELECT * FROM unnest(CAST(:subscriber_id AS integer[]), CAST(:delivery_id AS integer[]),
                         CAST(:kind AS varchar[]), CAST(:occurred_at AS timestamp[]),
                         CAST(:url AS text[]), CAST(:machine AS boolean[]),
                         CAST(:user_agent AS varchar[]), CAST(:provider_event_id AS varchar[]))
    ON CONFLICT (provider_event_id) DO NOTHING
    RETURNING id
""")


def _insert_events_pg(rows: list[dict[str, Any]]) -> int:
    columns: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in rows[0]}
    # The column type stores naive UTC; this statement bypasses it, so convert here.
    columns["occurred_at"] = [at.astimezone(UTC).replace(tzinfo=None)
                              for at in columns["occurred_at"]]
    return len(db.session.execute(PG_INSERT_EVENTS, columns).all())


def _earliest(times: dict[int, datetime], key: int, moment: datetime) -> None:
    if key not in times or moment < times[key]:
        times[key] = moment


def _record_engagement(batch: Batch) -> None:
    """Provider opens and clicks fill the first-open and first-click times we lack.

    Counts stay ours (the pixel and the redirect), so nothing is counted twice; a machine
    open (Apple Mail Privacy Protection) is an open, never a human one.
    """
    opened: dict[int, datetime] = {}
    human: dict[int, datetime] = {}
    clicked: dict[int, datetime] = {}
    for e, _sub_id, delivery_id in batch.resolved:
        if delivery_id is None or e.kind not in (EventKind.OPEN, EventKind.CLICK):
            continue
        _earliest(opened, delivery_id, e.occurred_at)
        if not e.machine:
            _earliest(human, delivery_id, e.occurred_at)
        if e.kind == EventKind.CLICK:
            _earliest(clicked, delivery_id, e.occurred_at)
    if not opened:
        return
    table = cast(Table, Delivery.__table__)
    stamp = table.c.opened_at.type
    stmt = (
        update(table).where(table.c.id == bindparam("b_id"))
        .values(opened_at=func.coalesce(table.c.opened_at, bindparam("b_open", type_=stamp)),
                human_opened_at=func.coalesce(table.c.human_opened_at,
                                              bindparam("b_human", type_=stamp)),
                clicked_at=func.coalesce(table.c.clicked_at, bindparam("b_click", type_=stamp)))
    )
    db.session.execute(stmt, [
        {"b_id": i, "b_open": at, "b_human": human.get(i), "b_click": clicked.get(i)}
        for i, at in opened.items()
    ])
    webhooks_out.emit_many("lesson.opened", [
        webhooks_out.lesson_data(i, d.subscriber_id, d.email, d.lesson_slug, d.position,
                                 at=webhooks_out.iso(human[i]), source="sendgrid")
        for i, d in ((i, batch.deliveries[i]) for i in human)
        if d.human_opened_at is None
    ])


def _record_problems(batch: Batch) -> None:
    """Bounces, blocks and drops leave their reason on the delivery, for the admin."""
    problems = {
        delivery_id: f"{e.kind}: {e.reason}" if e.reason else e.kind
        for e, _sub_id, delivery_id in batch.resolved
        if delivery_id is not None and e.kind in sg.PROBLEMS
    }
    if problems:
        table = cast(Table, Delivery.__table__)
        db.session.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.status == DeliveryStatus.SENT)
            .values(error=bindparam("b_error")),
            [{"b_id": i, "b_error": error[:2000]} for i, error in problems.items()],
        )


def _stop_mail(batch: Batch) -> int:
    """Bounced, complained and unsubscribed subscribers get nothing more, from now.

    Each subscriber takes the strongest status their events call for; a guarded UPDATE
    lets only a stronger status replace a weaker one, so replays and races change nothing
    twice. An event older than the subscriber's latest consent (they signed up again
    since) does not undo that consent.
    """
    wanted: dict[int, tuple[str, sg.SGEvent, int | None]] = {}
    for e, sub_id, delivery_id in batch.resolved:
        target = e.status
        if target is None:
            continue
        consent = batch.subscribers[sub_id].consent_at
        if consent is not None and e.occurred_at < consent.replace(microsecond=0):
            continue
        current = wanted.get(sub_id)
        if current is None or sg.outranks(target, current[0]):
            wanted[sub_id] = (target, e, delivery_id)
    if not wanted:
        return 0
    now = utcnow()
    by_status: dict[str, list[int]] = {}
    for sub_id, (target, _e, _d) in wanted.items():
        by_status.setdefault(target, []).append(sub_id)
    changed: list[tuple[int, str, str]] = []
    for target, sub_ids in by_status.items():
        values: dict[str, Any] = {"status": target, "next_send_at": None, "updated_at": now}
        if target == Status.UNSUBSCRIBED:
            values["unsubscribed_at"] = now
        for chunk in _chunks(sorted(sub_ids)):
            changed += [(row.id, row.email, target) for row in db.session.execute(
                update(Subscriber)
                .where(Subscriber.id.in_(chunk), Subscriber.status.in_(sg.statuses_below(target)))
                .values(**values)
                .returning(Subscriber.id, Subscriber.email)
                .execution_options(synchronize_session=False)
            )]
            db.session.execute(
                update(Delivery)
                .where(Delivery.subscriber_id.in_(chunk),
                       Delivery.status == DeliveryStatus.QUEUED)
                .values(status=DeliveryStatus.CANCELLED, error=target)
                .execution_options(synchronize_session=False)
            )
    for target in WEBHOOK_TYPE:
        webhooks_out.emit_many(WEBHOOK_TYPE[target], [
            webhooks_out.subscriber_data(
                sub_id, email, at=webhooks_out.iso(wanted[sub_id][1].occurred_at),
                reason=wanted[sub_id][1].reason, delivery_id=wanted[sub_id][2],
                source="sendgrid")
            for sub_id, email, status in changed if status == target
        ])
    return len(changed)
