"""Workers' side of the pipeline: claim deliveries, send each lesson batch, record outcomes.

Invariant 1 lives here: a worker *claims* deliveries with a conditional update
(queued -> sending) before sending, so duplicate jobs or several workers never send the
same lesson twice. What happened is then written back in a few bulk statements, not a
row at a time, so a batch of 1,000 costs a handful of queries.

A mail error says what was settled and what to do with the rest (course/mail/errors.py):
not accepted -> queued again; refused -> failed with the provider's words; no answer
-> ``unknown`` (never resent blindly); credentials refused -> queued, and sending paused.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import and_, select, update

from . import sendstate, tokens, webhooks_out
from .content import current_course
from .extensions import affected_rows, db, id_in
from .lessons import Course
from .mail import (
    AuthError,
    MailError,
    PermanentError,
    Recipient,
    Result,
    TransientError,
    UnknownOutcomeError,
    get_backend,
)
from .models import Delivery, DeliveryStatus, Status, Subscriber
from .render import confirmation_email, recipient_for, render_lesson
from .schedule import next_send_time
from .timeutil import utcnow

log = logging.getLogger(__name__)


def _is_postgres() -> bool:
    return db.engine.dialect.name == "postgresql"


def claim(ids: Iterable[int], now: datetime) -> list[int]:
    """Atomically move queued deliveries to ``sending``; only the winner gets each id.

    On PostgreSQL rows another worker is claiming right now are skipped, not waited for.
    """
    ids = list(ids)
    if not ids:
        return []
    target = id_in(Delivery.id, ids)
    if _is_postgres():
        free = (
            select(Delivery.id)
            .where(id_in(Delivery.id, ids), Delivery.status == DeliveryStatus.QUEUED)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        target = Delivery.id.in_(free)
    claimed = db.session.execute(
        update(Delivery)
        .where(target, Delivery.status == DeliveryStatus.QUEUED)
        .values(status=DeliveryStatus.SENDING, claimed_at=now, attempts=Delivery.attempts + 1)
        .returning(Delivery.id)
    ).scalars().all()
    db.session.commit()
    return sorted(claimed)


@dataclass
class Claimed:
    """A claimed delivery with what sending it needs (plain data, no ORM objects)."""

    id: int
    subscriber_id: int
    slug: str
    position: int
    attempts: int
    email: str
    name: str
    status: str
    timezone: str
    next_position: int


@dataclass
class Outcome:
    """What to write back after a batch, collected and then applied in bulk."""

    sent: dict[int, str] = field(default_factory=dict)  # id -> provider message id
    failed: dict[int, str] = field(default_factory=dict)  # id -> error
    unknown: dict[int, str] = field(default_factory=dict)
    requeue: dict[int, str] = field(default_factory=dict)
    requeue_keep_attempt: set[int] = field(default_factory=set)
    cancelled: dict[int, str] = field(default_factory=dict)


def send_deliveries(ids: Sequence[int], now: datetime | None = None) -> int:
    """Claim and send a batch of deliveries. Returns how many were sent.

    While sending is paused nothing is claimed: the deliveries stay queued.
    """
    now = now or utcnow()
    if sendstate.paused():
        return 0
    claimed = claim(ids, now)
    if not claimed:
        return 0
    rows = _claimed_rows(claimed)
    course = current_course()
    outcome = Outcome()
    groups: dict[str, list[Claimed]] = defaultdict(list)
    for row in rows:
        if row.status != Status.ACTIVE:
            outcome.cancelled[row.id] = f"subscriber is {row.status}"
        else:
            groups[row.slug].append(row)
    error: MailError | None = None
    try:
        for slug, group in groups.items():
            error = _send_group(course, slug, group, outcome) or error
            if isinstance(error, AuthError):
                break
    except BaseException as exc:
        # Anything unexpected (a bug, the job killed by a timeout): what was not settled may
        # or may not have left; mark it unknown so nobody resends it blindly.
        settled = set().union(*(vars(outcome)[k] for k in vars(outcome)))
        for group in groups.values():
            for row in group:
                if row.id not in settled:
                    outcome.unknown[row.id] = f"{type(exc).__name__}: {exc}"
        _apply(course, rows, outcome, now)
        raise
    # Groups not reached after an auth error are simply put back.
    settled = set().union(*(vars(outcome)[k] for k in vars(outcome)))
    for row in rows:
        if row.id not in settled:
            outcome.requeue[row.id] = "not sent: sending paused"
            outcome.requeue_keep_attempt.add(row.id)
    _apply(course, rows, outcome, now)
    if isinstance(error, AuthError):
        sendstate.pause(f"the mail provider refused our credentials ({error})")
    elif isinstance(error, TransientError):
        raise error  # RQ retries the job; the tick re-enqueues if retries run out
    return len(outcome.sent)


def _send_group(course: Course, slug: str, group: list[Claimed],
                outcome: Outcome) -> MailError | None:
    lesson = course.lesson_by_slug(slug)
    if lesson is None:
        for row in group:
            outcome.failed[row.id] = f"lesson {slug!r} is no longer in the course"
        return None
    rendered = render_lesson(course, lesson)
    signer, base_url = tokens.Signer(), current_app.config["BASE_URL"]
    recipients: list[Recipient] = [
        recipient_for(rendered, delivery_id=row.id, subscriber_id=row.subscriber_id,
                      email=row.email, name=row.name, signer=signer, base_url=base_url)
        for row in group
    ]
    backend = get_backend(current_app.config)
    error: MailError | None = None
    step = sendstate.chunk_size(len(recipients))
    for start in range(0, len(group), step):
        rows, chunk = group[start : start + step], recipients[start : start + step]
        if error is not None:
            # An earlier request failed: these were never tried. Put them back as they were.
            for row in rows:
                outcome.requeue[row.id] = f"not tried after an earlier error: {error}"
                outcome.requeue_keep_attempt.add(row.id)
            continue
        sendstate.wait_for_rate(len(chunk))
        try:
            results: list[Result | None] = list(backend.send_batch(rendered.template, chunk))
        except MailError as exc:
            error = exc
            results = [exc.result_for(i) for i in range(len(chunk))]
        _record(rows, results, error, outcome)
    if error is not None:
        log.warning("lesson %s: %s (%d recipients)", slug, error, len(group))
    return error


def _record(rows: list[Claimed], results: list[Result | None], error: MailError | None,
            outcome: Outcome) -> None:
    """Sort one request's recipients into the outcome by what the provider said."""
    for row, res in zip(rows, results, strict=True):
        if res is not None:
            if res.ok:
                outcome.sent[row.id] = res.message_id
            else:
                outcome.failed[row.id] = res.error or "refused by the provider"
        elif isinstance(error, UnknownOutcomeError):
            outcome.unknown[row.id] = str(error)
        elif isinstance(error, PermanentError):
            outcome.failed[row.id] = str(error)
        elif isinstance(error, AuthError):
            outcome.requeue[row.id] = str(error)
            outcome.requeue_keep_attempt.add(row.id)
        else:
            outcome.requeue[row.id] = str(error)


def _apply(course: Course, rows: list[Claimed], outcome: Outcome, now: datetime) -> None:
    """Write every outcome back in bulk, and move sent subscribers along the course."""
    by_id = {row.id: row for row in rows}
    session = db.session

    def bulk(values: list[dict[str, Any]]) -> None:
        if values:
            # ORM bulk UPDATE by primary key: one executemany, not one query per row.
            session.execute(update(Delivery), values)

    by_message: dict[str, list[int]] = defaultdict(list)
    for delivery_id, message_id in outcome.sent.items():
        by_message[message_id].append(delivery_id)
    if len(by_message) <= 4:  # a provider id per request: one statement per request
        for message_id, ids in by_message.items():
            session.execute(
                update(Delivery).where(id_in(Delivery.id, ids)).values(
                    status=DeliveryStatus.SENT, sent_at=now, provider_message_id=message_id,
                    error="", content_hash=_hash(course, by_id[ids[0]].slug))
                .execution_options(synchronize_session=False)
            )
    else:
        bulk([{"id": i, "status": DeliveryStatus.SENT, "sent_at": now, "error": "",
               "provider_message_id": m, "content_hash": _hash(course, by_id[i].slug)}
              for i, m in outcome.sent.items()])
    bulk([{"id": i, "status": DeliveryStatus.FAILED, "error": e[:2000]}
          for i, e in outcome.failed.items()])
    bulk([{"id": i, "status": DeliveryStatus.UNKNOWN, "error": e[:2000]}
          for i, e in outcome.unknown.items()])
    bulk([{"id": i, "status": DeliveryStatus.CANCELLED, "error": e}
          for i, e in outcome.cancelled.items()])
    max_attempts = current_app.config["SEND_MAX_ATTEMPTS"]
    requeue = []
    for i, e in outcome.requeue.items():
        attempts = by_id[i].attempts - (1 if i in outcome.requeue_keep_attempt else 0)
        gave_up = attempts >= max_attempts and i not in outcome.requeue_keep_attempt
        requeue.append({"id": i, "error": e[:2000], "enqueued_at": now, "attempts": attempts,
                        "status": DeliveryStatus.FAILED if gave_up else DeliveryStatus.QUEUED})
    bulk(requeue)
    # An unknown outcome most likely reached the subscriber: move them on rather than stall
    # their course; the delivery stays flagged for a person.
    _advance(course, [by_id[i] for i in (*outcome.sent, *outcome.unknown)], now)
    if webhooks_out.enabled():
        webhooks_out.emit_many("lesson.sent", [
            webhooks_out.lesson_data(i, by_id[i].subscriber_id, by_id[i].email, by_id[i].slug,
                                     by_id[i].position, at=webhooks_out.iso(now))
            for i in outcome.sent])
    session.commit()


def _hash(course: Course, slug: str) -> str:
    lesson = course.lesson_by_slug(slug)
    return lesson.content_hash if lesson else ""


def _advance(course: Course, sent: list[Claimed], now: datetime) -> None:
    """Move subscribers past the lesson just sent and set when the next is due.

    Subscribers sharing a time zone and lesson share the next send time, so one UPDATE
    serves each (lesson, zone) pair. The ``next_position`` guard makes an admin resend of
    an older lesson move nobody. In a progress-gated course the next lesson waits for
    ``max_wait_days``; marking this one done brings it forward (``tracking.release_next``).
    """
    done: set[int] = set()
    if course.progress_gated and sent:
        # Marked done already (a delivery settled late by the stale sweep): no waiting.
        done = set(db.session.scalars(select(Delivery.id).where(
            id_in(Delivery.id, [row.id for row in sent]), Delivery.completed_at.is_not(None))))
    groups: dict[tuple[int, str, int], list[int]] = defaultdict(list)
    for row in sent:
        if row.next_position == row.position:
            wait = course.cadence_days
            if course.progress_gated and row.id not in done:
                wait = max(course.max_wait_days, course.cadence_days)
            groups[(row.position, row.timezone, wait)].append(row.subscriber_id)
    for (position, zone, wait), subscriber_ids in groups.items():
        where = and_(id_in(Subscriber.id, subscriber_ids),
                     Subscriber.next_position == position)
        if course.lesson_at(position + 1) is None:
            values: dict[str, Any] = dict(status=Status.FINISHED, finished_at=now,
                                          next_send_at=None, next_position=position + 1)
            where = and_(where, Subscriber.status == Status.ACTIVE)
        else:
            values = dict(next_position=position + 1, next_send_at=next_send_time(
                now, zone, cadence_days=wait, send_hour=course.send_hour,
                skip_weekends=course.skip_weekends))
        db.session.execute(update(Subscriber).where(where).values(**values)
                           .execution_options(synchronize_session=False))


def _claimed_rows(ids: Sequence[int]) -> list[Claimed]:
    return [Claimed(**r._mapping) for r in db.session.execute(
        select(Delivery.id, Delivery.subscriber_id, Delivery.lesson_slug.label("slug"),
               Delivery.position, Delivery.attempts, Subscriber.email, Subscriber.name,
               Subscriber.status, Subscriber.timezone, Subscriber.next_position)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(id_in(Delivery.id, ids))
        .order_by(Delivery.id)
    )]


def sweep_stale_sending(now: datetime) -> int:
    """Deliveries left ``sending`` by a worker that died mid-send become ``unknown``.

    Past ``SENDING_STALE_SECONDS`` (longer than a job may run) nobody is sending them any
    more; they may or may not have left, so they are never resent blindly.
    """
    cutoff = now - timedelta(seconds=current_app.config["SENDING_STALE_SECONDS"])
    ids = db.session.execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_at < cutoff)
        .values(status=DeliveryStatus.UNKNOWN,
                error="the worker stopped while sending it (crashed or killed): "
                      "it may or may not have gone out")
        .returning(Delivery.id)
    ).scalars().all()
    if ids:
        _advance(current_course(), _claimed_rows(ids), now)
        log.warning("%d deliveries were left sending by a stopped worker; marked unknown",
                    len(ids))
    db.session.commit()
    return len(ids)


def resend(ids: Sequence[int]) -> int:
    """Put failed, unknown or stuck deliveries back in the queue (an admin's decision)."""
    count = affected_rows(db.session.execute(
        update(Delivery)
        .where(Delivery.id.in_(list(ids)),
               Delivery.status.in_([DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN,
                                    DeliveryStatus.SENDING]))
        .values(status=DeliveryStatus.QUEUED, attempts=0, error="", enqueued_at=None)
        .execution_options(synchronize_session=False)
    ))
    db.session.commit()
    return count


def send_confirmation(subscriber_id: int) -> bool:
    """Send the double opt-in email, if the subscriber is still waiting for one."""
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None or sub.status != Status.PENDING:
        return False
    template, recipient = confirmation_email(
        current_course(), subscriber_id=sub.id, email=sub.email, name=sub.name
    )
    results = get_backend(current_app.config).send_batch(template, [recipient])
    if not results[0].ok:
        log.warning("confirmation to subscriber %d failed: %s", sub.id, results[0].error)
    return results[0].ok


def stuck_sending(older_than: timedelta = timedelta(minutes=10)) -> list[Delivery]:
    """Deliveries claimed but never finished (a crash mid-send): shown to the admin."""
    cutoff = utcnow() - older_than
    return list(db.session.scalars(
        db.select(Delivery).where(
            Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_at < cutoff
        )
    ))



