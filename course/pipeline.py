"""The sending pipeline: the tick turns due subscribers into deliveries, workers send them.

Invariant 1 lives here: a delivery row is unique per (subscriber, lesson), and a worker
*claims* it with a conditional update (queued -> sending) before sending, so duplicate
jobs, overlapping ticks or several workers can never send the same lesson twice.
Invariant 2 too: the database is the truth; the tick re-enqueues queued deliveries that
Redis lost, turns what a crashed worker left ``sending`` into ``unconfirmed`` (if its
request was written) or queued again (if not), and settles unconfirmed lessons
(``course.unconfirmed``). While the provider is out (a backoff) it enqueues nothing.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import or_, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import queue, sendstate
from .content import current_course
from .extensions import affected_rows, db, id_in
from .models import Delivery, DeliveryStatus, Status, Subscriber
from .sending import (
    claim,
    resend,
    send_deliveries,
    stuck_sending,
)
from .timeutil import utcnow
from .unconfirmed import settle, sweep_stale_sending

__all__ = ["tick", "claim", "send_deliveries", "stuck_sending",
           "cancel_pending", "enqueue_send", "resend", "TickResult"]

log = logging.getLogger(__name__)

TICK_CHUNK = 10000  # subscribers per transaction: about 1,000 per lesson batch
INSERT_CHUNK = 1000  # rows per INSERT statement (SQLite's bound-parameter limit)
BATCH_SIZE = 1000  # deliveries per request: SendGrid takes 1,000 recipients per call
# Deliveries per send job: five requests' worth, so a work horse is forked (and warms up:
# imports, the rendered lesson, a database connection) once per 5,000 lessons. The job
# still claims and settles one request's worth at a time (``sending.send_deliveries``).
JOB_SIZE = 5 * BATCH_SIZE
# With a send rate set, about this much sending per job, so the jobs of one tick spread
# over every worker and their waits for the shared clock overlap: one worker sending a
# whole tick alone would leave the clock idle between its requests and fall short of it.
JOB_SECONDS = 1

Enqueuer = Callable[[list[int]], None]


@dataclass
class TickResult:
    created: int = 0
    finished: int = 0
    enqueued: int = 0
    unconfirmed: int = 0  # left sending by a dead worker, after its request was written
    batches: list[list[int]] = field(default_factory=list)  # the ids of each job enqueued


def _is_postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


def enqueue_send(ids: list[int]) -> None:
    queue.enqueue("workers.tasks.send_deliveries", ids,
                  job_timeout=current_app.config["SEND_JOB_TIMEOUT"])


def tick(now: datetime | None = None, *, enqueue: Enqueuer | None = None,
         subscriber_ids: Sequence[int] | None = None) -> TickResult:
    """Create deliveries for due subscribers and enqueue them, chunk by chunk, so sending
    starts while the tick is still working; then enqueue any queued delivery that Redis lost.

    ``subscriber_ids`` limits the tick to those subscribers (the rehearsal uses it, on a
    simulated clock): steps that concern every subscriber, such as the stale-``sending``
    sweep, are then skipped. ``enqueue`` replaces the RQ enqueue (the rehearsal sends
    in-process).
    """
    now = now or utcnow()
    enqueue = enqueue or enqueue_send
    result = TickResult()
    running = not sendstate.paused() or sendstate.probe_and_resume()
    backing_off = sendstate.backing_off(now) if running else None
    _finish_past_the_end(now, subscriber_ids, result)
    _create_due_deliveries(now, result, subscriber_ids,
                           enqueue if running and not backing_off else None)
    if subscriber_ids is None:
        # Global sweeps: never under a rehearsal's own clock, limited to its subscribers.
        result.unconfirmed = sweep_stale_sending(now)
        settle(now)
    if not running:
        log.warning("tick: sending is paused (%s); nothing enqueued",
                    (sendstate.paused() or {}).get("reason", "?"))
        return result
    if backing_off:
        log.warning("tick: the mail provider is out until %s (%s); nothing enqueued",
                    backing_off.get("until"), backing_off.get("reason", "?"))
        return result
    _enqueue_queued(now, result, enqueue, subscriber_ids)
    if result.created or result.enqueued or result.finished:
        log.info("tick: %d new deliveries, %d enqueued in %d batches, %d finished",
                 result.created, result.enqueued, len(result.batches), result.finished)
    return result


def _finish_past_the_end(now: datetime, subscriber_ids: Sequence[int] | None,
                         result: TickResult) -> None:
    """Subscribers due for a lesson past the last one (the course got shorter) are done."""
    stmt = (
        update(Subscriber)
        .where(Subscriber.status == Status.ACTIVE, Subscriber.next_send_at <= now,
               Subscriber.next_position > current_course().length)
        .values(status=Status.FINISHED, finished_at=now, next_send_at=None)
        .execution_options(synchronize_session=False)
    )
    if subscriber_ids is not None:
        stmt = stmt.where(Subscriber.id.in_(list(subscriber_ids)))
    result.finished += affected_rows(db.session.execute(stmt))
    db.session.commit()


def _create_due_deliveries(now: datetime, result: TickResult,
                           subscriber_ids: Sequence[int] | None,
                           enqueue: Enqueuer | None) -> None:
    """Due subscribers -> queued deliveries, one chunk per transaction, in set-based SQL.

    Each chunk's deliveries are stamped ``enqueued_at`` in the same statement (unless
    sending is paused, when ``enqueue`` is None) and packed into send jobs as soon as they
    fill one (see :class:`_Packer`); what is left goes out once every chunk is done.
    """
    take = _take_due_postgres if _is_postgres() else _take_due
    packer = _Packer(enqueue, result) if enqueue is not None else None
    while True:
        due, created = take(now, subscriber_ids, now if enqueue else None)
        db.session.commit()
        if not due:
            break
        result.created += len(created)
        if packer is not None and created:
            packer.add(created)
    if packer is not None:
        packer.finish()


def job_size() -> int:
    """Deliveries per send job: ``JOB_SIZE``, or with a send rate set about
    ``JOB_SECONDS`` of sending, never less than one request's worth."""
    rate = float(current_app.config.get("SEND_RATE", 0) or 0)
    if rate <= 0:
        return JOB_SIZE
    return max(BATCH_SIZE, min(JOB_SIZE, int(rate * JOB_SECONDS) // BATCH_SIZE * BATCH_SIZE))


class _Packer:
    """Packs the tick's new deliveries into send jobs that make full requests.

    A chunk of the tick yields about 1,000 deliveries per lesson, rarely exactly: cut as
    they came, a chunk makes many half-empty requests. Instead each lesson's deliveries
    are held until they fill a request of ``BATCH_SIZE``, full requests are queued up
    lesson by lesson, and a job is enqueued whenever ``job_size()`` of them are waiting;
    the remainders (under a request's worth per lesson) go out last, in ``finish``.

    Held deliveries are already stamped ``enqueued_at``: if the tick dies before enqueueing
    them, the next tick re-enqueues them after ``REQUEUE_AFTER_SECONDS`` as any lost job.
    """

    def __init__(self, enqueue: Enqueuer, result: TickResult):
        self.enqueue, self.result, self.size = enqueue, result, job_size()
        self.by_lesson: dict[str, list[int]] = defaultdict(list)
        self.ready: list[int] = []  # full requests, one lesson after another

    def add(self, created: list[tuple[int, str]]) -> None:
        for delivery_id, slug in created:
            self.by_lesson[slug].append(delivery_id)
        for ids in self.by_lesson.values():
            while len(ids) >= BATCH_SIZE:
                ids.sort()
                self.ready += ids[:BATCH_SIZE]
                del ids[:BATCH_SIZE]
        while len(self.ready) >= self.size:
            self._emit(self.ready[: self.size])
            del self.ready[: self.size]

    def finish(self) -> None:
        for ids in self.by_lesson.values():
            self.ready += sorted(ids)
        self.by_lesson = defaultdict(list)
        while self.ready:
            self._emit(self.ready[: self.size])
            del self.ready[: self.size]

    def _emit(self, ids: list[int]) -> None:
        try:
            _enqueue_batch(ids, self.enqueue, self.result)
        except Exception:
            # Redis is down: what is still held goes back to unmarked as well.
            held = self.ready + [i for ids in self.by_lesson.values() for i in ids]
            self.ready, self.by_lesson = [], defaultdict(list)
            if held:
                db.session.execute(update(Delivery).where(id_in(Delivery.id, held))
                                   .values(enqueued_at=None))
                db.session.commit()
            raise


def _take_due(now: datetime, subscriber_ids: Sequence[int] | None,
              stamp: datetime | None) -> tuple[int, list[tuple[int, str]]]:
    """The portable version (SQLite): select a chunk, mark it in flight, insert."""
    course = current_course()
    stmt = (
        select(Subscriber.id, Subscriber.next_position, Subscriber.next_send_at)
        .where(Subscriber.status == Status.ACTIVE, Subscriber.next_send_at <= now)
        .order_by(Subscriber.next_send_at, Subscriber.id)
        .limit(TICK_CHUNK)
    )
    if subscriber_ids is not None:
        stmt = stmt.where(Subscriber.id.in_(list(subscriber_ids)))
    due = db.session.execute(stmt).all()
    if not due:
        return 0, []
    scheduled_at = {sub_id: scheduled for sub_id, _, scheduled in due}
    # Take them with a conditional write, and trust only what it returns: SQLite's read took
    # no lock, so another tick (and a worker moving a subscriber on) may have been faster.
    taken = db.session.execute(
        update(Subscriber)
        .where(Subscriber.id.in_(list(scheduled_at)), Subscriber.status == Status.ACTIVE,
               Subscriber.next_send_at <= now)
        .values(next_send_at=None)
        .returning(Subscriber.id, Subscriber.next_position)
        .execution_options(synchronize_session=False)
    ).all()
    rows: list[dict[str, Any]] = []
    for sub_id, position in taken:
        scheduled = scheduled_at[sub_id]
        lesson = course.lesson_at(position)
        if lesson is not None:
            rows.append(dict(subscriber_id=sub_id, lesson_slug=lesson.slug,
                             position=lesson.position, content_hash=lesson.content_hash,
                             status=DeliveryStatus.QUEUED, scheduled_at=scheduled,
                             created_at=now, enqueued_at=stamp, attempts=0, error="",
                             provider_message_id="", open_count=0, click_count=0))
    created: list[tuple[int, str]] = []
    for start in range(0, len(rows), INSERT_CHUNK):
        stmt_ins = sqlite_insert(Delivery).values(rows[start : start + INSERT_CHUNK])
        upsert = stmt_ins.on_conflict_do_update(
            # A lesson cancelled earlier (unsubscribed, paused) goes out when due again.
            index_elements=["subscriber_id", "lesson_slug"],
            set_=dict(status=DeliveryStatus.QUEUED, enqueued_at=stamp, error=""),
            where=Delivery.status == DeliveryStatus.CANCELLED,
        ).returning(Delivery.id, Delivery.lesson_slug)
        created.extend((i, slug) for i, slug in db.session.execute(upsert))
    return len(due), created


def _take_due_postgres(now: datetime, subscriber_ids: Sequence[int] | None,
                       stamp: datetime | None) -> tuple[int, list[tuple[int, str]]]:
    """One statement per chunk on PostgreSQL: lock due rows (skipping rows another tick
    holds), mark them in flight and insert their deliveries, all inside the database."""
    lessons = current_course().lessons
    values = ", ".join(f"(:p{i}, :s{i}, :h{i})" for i in range(len(lessons)))
    params: dict[str, Any] = {"now": _naive(now), "stamp": _naive(stamp), "chunk": TICK_CHUNK}
    for i, lesson in enumerate(lessons):
        params.update({f"p{i}": lesson.position, f"s{i}": lesson.slug,
                       f"h{i}": lesson.content_hash})
    only = ""
    if subscriber_ids is not None:
        only = "AND id = ANY(:ids)"
        params["ids"] = list(subscriber_ids)
    sql = f"""
        WITH due AS (
            SELECT id, next_position, next_send_at FROM subscriber
            WHERE status = 'active' AND next_send_at <= :now {only}
            ORDER BY next_send_at, id LIMIT :chunk
            FOR UPDATE SKIP LOCKED
        ), taken AS (
            UPDATE subscriber AS s SET next_send_at = NULL FROM due
            -- The join once more as an id list: read by primary key, not by hashing the
            -- whole subscriber table for every chunk.
            WHERE s.id = due.id AND s.id = ANY(ARRAY(SELECT id FROM due))
            RETURNING s.id, due.next_position, due.next_send_at
        ), lesson (position, slug, hash) AS (VALUES {values}), ins AS (
            INSERT INTO delivery (subscriber_id, lesson_slug, position, content_hash, status,
                scheduled_at, created_at, enqueued_at, attempts, error, provider_message_id,
                open_count, click_count)
            SELECT taken.id, lesson.slug, lesson.position, lesson.hash, 'queued',
                taken.next_send_at, :now, CAST(:stamp AS timestamp), 0, '', '', 0, 0
            FROM taken JOIN lesson ON lesson.position = taken.next_position
            ON CONFLICT (subscriber_id, lesson_slug) DO UPDATE
                SET status = 'queued', enqueued_at = EXCLUDED.enqueued_at, error = ''
                WHERE delivery.status = 'cancelled'
            RETURNING id, lesson_slug
        )
        SELECT (SELECT count(*) FROM taken), array_agg(ins.id), array_agg(ins.lesson_slug)
        FROM ins
    """
    taken, ids, slugs = db.session.execute(text(sql), params).one()
    return int(taken), list(zip(ids or [], slugs or [], strict=True))


def _naive(moment: datetime | None) -> datetime | None:
    """UTC columns hold naive UTC (see timeutil.UTCDateTime); raw SQL must match."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment else None


def _enqueue_batch(ids: list[int], enqueue: Enqueuer, result: TickResult) -> None:
    try:
        enqueue(ids)
    except Exception:
        # Redis is down: unmark so the next tick tries again straight away.
        db.session.rollback()
        db.session.execute(update(Delivery).where(Delivery.id.in_(ids))
                           .values(enqueued_at=None))
        db.session.commit()
        raise
    result.enqueued += len(ids)
    result.batches.append(ids)


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
            _enqueue_batch(sorted(taken), enqueue, result)


def cancel_pending(subscriber_id: int) -> int:
    """Cancel deliveries not yet sent (on unsubscribe); a claimed one is already out."""
    res = db.session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.status == DeliveryStatus.QUEUED)
        .values(status=DeliveryStatus.CANCELLED, error="unsubscribed")
    )
    return affected_rows(res)
