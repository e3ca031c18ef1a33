"""The sending pipeline: the tick turns due subscribers into deliveries, workers send them.

Invariant 1 lives here: a delivery row is unique per (subscriber, lesson), and a worker
*claims* it with a conditional update (queued -> sending) before sending, so duplicate
jobs, overlapping ticks or several workers can never send the same lesson twice.
Invariant 2 too: the database is the truth; the tick re-enqueues queued deliveries that
Redis lost, and marks ``unknown`` (for a person to decide, never resent blindly) what a
crashed worker left ``sending``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import queue, sendstate
from .content import current_course
from .extensions import affected_rows, db
from .models import Delivery, DeliveryStatus, Status, Subscriber
from .sending import (
    claim,
    resend,
    send_confirmation,
    send_deliveries,
    stuck_sending,
    sweep_stale_sending,
)
from .timeutil import utcnow

__all__ = ["tick", "claim", "send_deliveries", "send_confirmation", "stuck_sending",
           "cancel_pending", "enqueue_send", "resend", "TickResult"]

log = logging.getLogger(__name__)

TICK_CHUNK = 5000  # subscribers per transaction
INSERT_CHUNK = 1000  # rows per INSERT statement (SQLite's bound-parameter limit)
BATCH_SIZE = 1000  # deliveries per send job: SendGrid takes 1,000 recipients per call

Enqueuer = Callable[[list[int]], None]


@dataclass
class TickResult:
    created: int = 0
    finished: int = 0
    enqueued: int = 0
    unknown: int = 0
    batches: list[list[int]] = field(default_factory=list)


def _is_postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


def _insert(model: type[db.Model]):  # type: ignore[name-defined]
    return pg_insert(model) if _is_postgres() else sqlite_insert(model)


def enqueue_send(ids: list[int]) -> None:
    queue.enqueue("workers.tasks.send_deliveries", ids)


def tick(now: datetime | None = None, *, enqueue: Enqueuer | None = None,
         subscriber_ids: Sequence[int] | None = None) -> TickResult:
    """Create deliveries for due subscribers, then enqueue every queued delivery not in flight.

    ``subscriber_ids`` limits the tick to those subscribers (the rehearsal uses it), and
    ``enqueue`` replaces the RQ enqueue (the rehearsal sends in-process).
    """
    now = now or utcnow()
    result = TickResult()
    _create_due_deliveries(now, result, subscriber_ids)
    result.unknown = sweep_stale_sending(now)
    if sendstate.paused() and not sendstate.probe_and_resume():
        log.warning("tick: sending is paused (%s); nothing enqueued",
                    (sendstate.paused() or {}).get("reason", "?"))
        return result
    _enqueue_queued(now, result, enqueue or enqueue_send, subscriber_ids)
    if result.created or result.enqueued or result.finished:
        log.info("tick: %d new deliveries, %d enqueued in %d batches, %d finished",
                 result.created, result.enqueued, len(result.batches), result.finished)
    return result


def _create_due_deliveries(now: datetime, result: TickResult,
                           subscriber_ids: Sequence[int] | None) -> None:
    """Due subscribers -> queued deliveries, a chunk per transaction, in set-based SQL."""
    course = current_course()
    while True:
        stmt = (
            select(Subscriber.id, Subscriber.next_position, Subscriber.next_send_at)
            .where(Subscriber.status == Status.ACTIVE, Subscriber.next_send_at <= now)
            .order_by(Subscriber.next_send_at, Subscriber.id)
            .limit(TICK_CHUNK)
        )
        if subscriber_ids is not None:
            stmt = stmt.where(Subscriber.id.in_(list(subscriber_ids)))
        if _is_postgres():
            # Several ticks (on several hosts) never take the same rows.
            stmt = stmt.with_for_update(skip_locked=True)
        due = db.session.execute(stmt).all()
        if not due:
            db.session.commit()
            return
        rows: list[dict[str, Any]] = []
        finished: list[int] = []
        for sub_id, position, scheduled in due:
            lesson = course.lesson_at(position)
            if lesson is None:
                finished.append(sub_id)
                continue
            rows.append(dict(subscriber_id=sub_id, lesson_slug=lesson.slug,
                             position=lesson.position, content_hash=lesson.content_hash,
                             status=DeliveryStatus.QUEUED, scheduled_at=scheduled,
                             created_at=now, attempts=0, error="", provider_message_id="",
                             open_count=0, click_count=0))
        # In flight from now on: nothing more is due for them until their lesson is settled.
        db.session.execute(
            update(Subscriber).where(Subscriber.id.in_([r[0] for r in due]))
            .values(next_send_at=None).execution_options(synchronize_session=False)
        )
        if finished:
            db.session.execute(
                update(Subscriber).where(Subscriber.id.in_(finished))
                .values(status=Status.FINISHED, finished_at=now)
                .execution_options(synchronize_session=False)
            )
            result.finished += len(finished)
        for start in range(0, len(rows), INSERT_CHUNK):
            stmt_ins = (
                _insert(Delivery)
                .values(rows[start : start + INSERT_CHUNK])
                .on_conflict_do_nothing(index_elements=["subscriber_id", "lesson_slug"])
                .returning(Delivery.id)
            )
            result.created += len(db.session.execute(stmt_ins).all())
        if rows:
            _revive_cancelled(rows)
        db.session.commit()


def _revive_cancelled(rows: list[dict[str, object]]) -> None:
    """A lesson cancelled earlier (unsubscribed, paused) goes out when it is due again."""
    wanted = {(r["subscriber_id"], r["lesson_slug"]) for r in rows}
    cancelled = db.session.execute(
        db.select(Delivery.id, Delivery.subscriber_id, Delivery.lesson_slug).where(
            Delivery.subscriber_id.in_([r["subscriber_id"] for r in rows]),
            Delivery.status == DeliveryStatus.CANCELLED,
        )
    ).all()
    revive = [row.id for row in cancelled if (row.subscriber_id, row.lesson_slug) in wanted]
    if revive:
        db.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(revive), Delivery.status == DeliveryStatus.CANCELLED)
            .values(status=DeliveryStatus.QUEUED, enqueued_at=None, error="")
        )


def _enqueue_queued(now: datetime, result: TickResult, enqueue: Enqueuer,
                    subscriber_ids: Sequence[int] | None) -> None:
    cutoff = now - timedelta(seconds=current_app.config["REQUEUE_AFTER_SECONDS"])
    not_in_flight = or_(Delivery.enqueued_at.is_(None), Delivery.enqueued_at < cutoff)
    stmt = db.select(Delivery.id, Delivery.lesson_slug).where(
        Delivery.status == DeliveryStatus.QUEUED, not_in_flight
    ).order_by(Delivery.id)
    if subscriber_ids is not None:
        stmt = stmt.where(Delivery.subscriber_id.in_(list(subscriber_ids)))
    by_lesson: dict[str, list[int]] = defaultdict(list)
    for delivery_id, slug in db.session.execute(stmt):
        by_lesson[slug].append(delivery_id)
    for ids in by_lesson.values():
        for start in range(0, len(ids), BATCH_SIZE):
            chunk = ids[start : start + BATCH_SIZE]
            # Mark first, conditionally: a concurrent tick that marked them already wins.
            taken = db.session.execute(
                update(Delivery)
                .where(Delivery.id.in_(chunk), Delivery.status == DeliveryStatus.QUEUED,
                       not_in_flight)
                .values(enqueued_at=now)
                .returning(Delivery.id)
            ).scalars().all()
            db.session.commit()
            if not taken:
                continue
            taken = sorted(taken)
            try:
                enqueue(taken)
            except Exception:
                # Redis is down: unmark so the next tick tries again straight away.
                db.session.execute(update(Delivery).where(Delivery.id.in_(taken))
                                   .values(enqueued_at=None))
                db.session.commit()
                raise
            result.enqueued += len(taken)
            result.batches.append(taken)


def cancel_pending(subscriber_id: int) -> int:
    """Cancel deliveries not yet sent (on unsubscribe); a claimed one is already out."""
    res = db.session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status == DeliveryStatus.QUEUED)
        .values(status=DeliveryStatus.CANCELLED, error="unsubscribed")
    )
    return affected_rows(res)
