"""Workers' side of the pipeline: claim deliveries, send each lesson batch, record outcomes.

Invariant 1 lives here: a worker *claims* deliveries with a conditional update
(queued -> sending) before sending, so duplicate jobs or several workers never send the
same lesson twice. What happened is then written back in a few bulk statements, not a
row at a time, so a batch of 1,000 costs a handful of queries.

A mail error says what was settled and what to do with the rest (course/mail/errors.py):
not accepted (an outage: 5xx, 429, no connection) -> queued again without using an
attempt, and every worker backs off (``sendstate.back_off``); refused -> failed with the
provider's words; written but no answer -> ``unconfirmed`` (never resent blindly; the
subscriber waits at that lesson until ``course.unconfirmed`` settles it); credentials
refused -> queued, and sending paused. Each request is written down before it goes out
(``course.send_requests``), so a crash or a job timeout leaves ``unconfirmed`` only what
may really have reached the provider.
"""

from __future__ import annotations

import gc
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

from flask import current_app
from rq.timeouts import JobTimeoutException
from sqlalchemy import and_, bindparam, select, text, update

from . import send_requests, sendstate, tokens, webhooks_out
from .content import current_course
from .extensions import db, id_in
from .lessons import Course
from .mail import (
    AuthError,
    MailBackend,
    MailError,
    PermanentError,
    Recipient,
    Result,
    TransientError,
    UnknownOutcomeError,
    get_backend,
)
from .models import Delivery, DeliveryStatus, Status, Subscriber
from .render import recipient_for, render_lesson
from .schedule import next_send_time
from .timeutil import UTCDateTime, utcnow

log = logging.getLogger(__name__)

# Nobody gets mail in these states, whatever is queued for them: everyone else does (a
# finished or paused subscriber's lesson is queued only by an admin's resend).
NO_MAIL = (Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED, Status.PENDING)


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


# PostgreSQL's statements for the send path, written as SQL: each runs once per 1,000
# lessons, with the ids bound as one array literal (``_int_array``: ~5x cheaper to send
# than a list of 1,000 parameters), and so that every row is reached by primary key
# whatever the planner believes (on a fresh table without statistics it once scanned
# every queued delivery for each claim).

# Claim a slice and read what sending it needs, in one statement. The claim is the same
# conditional queued -> sending as ``claim``: each id is locked through its primary key if
# it is still queued, skipping rows another worker is claiming right now (the status is
# checked under the lock, so the outer UPDATE needs no condition of its own). The
# subscriber's row is read, not locked.
CLAIM_AND_READ = text("""
    UPDATE delivery AS d
    SET status = :sending, claimed_at = :now, attempts = d.attempts + 1
    FROM subscriber AS s, (
        SELECT f.id FROM unnest(CAST(:ids AS integer[])) AS u(id)
        CROSS JOIN LATERAL (SELECT id FROM delivery WHERE id = u.id AND status = :queued
                            FOR UPDATE SKIP LOCKED) AS f
    ) AS free
    WHERE d.id = free.id AND s.id = d.subscriber_id
    RETURNING d.id, d.subscriber_id, d.lesson_slug, d.position, d.attempts,
              s.email, s.name, s.status, s.timezone, s.next_position
""").bindparams(bindparam("now", type_=UTCDateTime()))

# One request's recipients are sent (they share SendGrid's message id).
MARK_SENT = text("""
    UPDATE delivery SET status = :status, sent_at = :sent_at, error = :error,
        provider_message_id = :provider_message_id, content_hash = :content_hash,
        request_id = :request_id
    WHERE id = ANY(CAST(:ids AS integer[]))
""").bindparams(bindparam("sent_at", type_=UTCDateTime()))

# Move sent subscribers along, whatever their zones and lessons (see ``_advance``): each
# subscriber id comes with the index (1-based) of its group in the group arrays, which
# say the lesson sent, when the next is due and whether that was the last. ``s.id =
# ANY(...)`` repeats the join for the planner: subscribers are read by primary key
# rather than the whole table hashed.
ADVANCE = text("""
    UPDATE subscriber AS s
    SET next_position = g.position + 1, next_send_at = g.next_send_at,
        status = CASE WHEN g.finished THEN :finished ELSE s.status END,
        finished_at = CASE WHEN g.finished THEN :now ELSE s.finished_at END,
        updated_at = :updated
    FROM unnest(CAST(:ids AS integer[]), CAST(:groups AS integer[])) AS v(id, g)
    JOIN unnest(CAST(:positions AS integer[]), CAST(:next_send_at AS timestamp[]),
                CAST(:last AS boolean[])) WITH ORDINALITY
         AS g(position, next_send_at, finished, n) ON g.n = v.g
    WHERE s.id = v.id AND s.id = ANY(CAST(:ids AS integer[]))
      AND s.next_position = g.position AND (NOT g.finished OR s.status = :active)
""").bindparams(bindparam("now", type_=UTCDateTime()), bindparam("updated", type_=UTCDateTime()))


def _int_array(values: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers (``{1,2,3}``)."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


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
    unconfirmed: dict[int, str] = field(default_factory=dict)
    requeue: dict[int, str] = field(default_factory=dict)
    requeue_keep_attempt: set[int] = field(default_factory=set)
    cancelled: dict[int, str] = field(default_factory=dict)
    request_of: dict[int, int] = field(default_factory=dict)  # id -> send_request id

    def settled(self) -> set[int]:
        return {*self.sent, *self.failed, *self.unconfirmed, *self.requeue, *self.cancelled}


def _claim_rows(ids: Sequence[int], now: datetime) -> list[Claimed]:
    """Claim (as :func:`claim` does) and read the claimed rows, ordered by id."""
    if not ids:
        return []
    if not _is_postgres():
        return _claimed_rows(claim(ids, now))
    result = db.session.execute(CLAIM_AND_READ, {
        "ids": _int_array(ids), "now": now, "queued": DeliveryStatus.QUEUED,
        "sending": DeliveryStatus.SENDING})
    rows = sorted((Claimed(*row) for row in result), key=attrgetter("id"))
    db.session.commit()
    return rows


def send_deliveries(ids: Sequence[int], now: datetime | None = None) -> int:
    """Claim and send a job's deliveries, one request's worth (up to 1,000) at a time.
    Returns how many were sent.

    A job may carry several requests' worth (the tick packs about five, so a work horse
    is forked once per 5,000 lessons, not per 1,000), but each slice is claimed, sent and
    settled before the next is claimed: a worker killed mid-job leaves at most one
    request's worth ``sending`` (later ``unconfirmed`` if that request was written, else
    queued again) and the rest still queued. While sending is paused or backing off
    nothing is claimed: the deliveries stay queued, released for the tick to enqueue once
    it is over. An outage ends the job the same way, after backing off.
    """
    with _collector_paused():
        return _send_slices(list(ids), now)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold Python's cyclic garbage collector off during a job.

    A batch allocates a few dicts and strings per recipient, none of them cyclic
    (reference counting frees them), yet every 700 allocations trigger a collection
    pass; in a forked work horse the older passes also walk, and so copy, the parent's
    pages. That was ~15% of a job's CPU. Collection resumes (and catches up) after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _send_slices(ids: list[int], now: datetime | None) -> int:
    sent = 0
    backend: MailBackend | None = None
    backoff_ended = False
    for start in range(0, len(ids), sendstate.MAX_PER_REQUEST):
        at = now or utcnow()
        backoff = None if backoff_ended else sendstate.backoff()
        if sendstate.paused() or (backoff and sendstate.backing_off(at, backoff)):
            _release(ids[start:])
            break
        backoff_ended = backoff_ended or backoff is None
        rows = _claim_rows(ids[start : start + sendstate.MAX_PER_REQUEST], at)
        if not rows:
            continue
        backend = backend or get_backend(current_app.config)
        count, error = _send_claimed(rows, at, backend)
        sent += count
        if count and not backoff_ended:
            sendstate.end_backoff()  # the provider took a request: the outage is over
            backoff_ended = True
        if isinstance(error, AuthError):
            sendstate.pause(f"the mail provider refused our credentials ({error})")
            _release(ids[start + sendstate.MAX_PER_REQUEST:])
            break
        if isinstance(error, TransientError):
            sendstate.back_off(str(error), now or utcnow(), error.retry_after)
            _release(ids[start + sendstate.MAX_PER_REQUEST:])
            break
    return sent


def _release(ids: Sequence[int]) -> None:
    """Queued deliveries this job will not send: unmark them, so the tick enqueues them
    as soon as sending may go on instead of ``REQUEUE_AFTER_SECONDS`` later."""
    if ids:
        db.session.execute(update(Delivery)
                           .where(id_in(Delivery.id, list(ids)),
                                  Delivery.status == DeliveryStatus.QUEUED)
                           .values(enqueued_at=None)
                           .execution_options(synchronize_session=False))
        db.session.commit()


def _send_claimed(rows: list[Claimed], now: datetime,
                  backend: MailBackend) -> tuple[int, MailError | None]:
    """Send claimed deliveries lesson by lesson and write every outcome back."""
    course = current_course()
    outcome = Outcome()
    groups: dict[str, list[Claimed]] = defaultdict(list)
    for row in rows:
        if row.status in NO_MAIL:
            # Active or not (a finished subscriber's resend goes out), never to these.
            outcome.cancelled[row.id] = f"subscriber is {row.status}"
        else:
            groups[row.slug].append(row)
    error: MailError | None = None
    journal = send_requests.Journal(now)
    try:
        for slug, group in groups.items():
            error = _send_group(course, slug, group, outcome, backend, journal) or error
            if isinstance(error, AuthError | TransientError):
                break
    except BaseException as exc:
        # Anything unexpected (a bug, the job killed by a timeout): a request written and
        # not answered may have been accepted, so its deliveries are unconfirmed; the rest
        # never left and go back to the queue (a bug that keeps failing uses attempts up).
        in_flight, settled = journal.in_flight(), outcome.settled()
        for row in rows:
            if row.id in settled:
                continue
            if row.id in in_flight:
                outcome.unconfirmed[row.id] = f"{type(exc).__name__}: {exc}"
                if journal.request_id is not None:
                    outcome.request_of[row.id] = journal.request_id
            else:
                outcome.requeue[row.id] = f"not sent: {type(exc).__name__}: {exc}"
                if not isinstance(exc, Exception) or isinstance(exc, JobTimeoutException):
                    outcome.requeue_keep_attempt.add(row.id)  # not the message's fault
        _apply(course, rows, outcome, now)
        raise
    finally:
        if hasattr(backend, "on_request"):
            backend.on_request = None  # type: ignore[attr-defined]
    # Groups not reached after an auth error or an outage are simply put back.
    settled = outcome.settled()
    for row in rows:
        if row.id not in settled:
            outcome.requeue[row.id] = f"not sent: {error}" if error else "not sent"
            outcome.requeue_keep_attempt.add(row.id)
    _apply(course, rows, outcome, now)
    return len(outcome.sent), error


def _send_group(course: Course, slug: str, group: list[Claimed], outcome: Outcome,
                backend: MailBackend | None = None,
                journal: send_requests.Journal | None = None) -> MailError | None:
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
    backend = backend or get_backend(current_app.config)
    journal = journal or send_requests.Journal(utcnow())
    # A backend with a hook tells the journal before each attempt itself (the SendGrid
    # backend retries inside send_batch); for the others the whole call is the request.
    hooked = hasattr(backend, "on_request")
    if hooked:
        backend.on_request = journal.event  # type: ignore[attr-defined]
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
        journal.begin([row.id for row in rows])
        if not hooked:
            journal.written()
        try:
            results: list[Result | None] = list(backend.send_batch(rendered.template, chunk))
        except MailError as exc:
            error = exc
            results = [exc.result_for(i) for i in range(len(chunk))]
        if journal.request_id is not None:
            outcome.request_of.update((row.id, journal.request_id) for row in rows)
        _record(rows, results, error, outcome)
        journal.done()
    if error is not None:
        log.warning("lesson %s: %s (%d recipients)", slug, error, len(group))
    return error


def _record(rows: list[Claimed], results: list[Result | None], error: MailError | None,
            outcome: Outcome) -> None:
    """Sort one request's recipients into the outcome by what the provider said.

    Only a refusal (a 4xx for the message, or the provider's own failure result) fails a
    delivery; an outage puts it back without using an attempt.
    """
    in_flight = getattr(error, "in_flight", None)
    unsettled = 0
    for row, res in zip(rows, results, strict=True):
        if res is not None:
            if res.ok:
                outcome.sent[row.id] = res.message_id
            else:
                outcome.failed[row.id] = res.error or "refused by the provider"
        elif isinstance(error, UnknownOutcomeError):
            unsettled += 1
            if in_flight is None or unsettled <= in_flight:
                outcome.unconfirmed[row.id] = str(error)
            else:
                outcome.requeue[row.id] = f"not tried after an earlier error: {error}"
                outcome.requeue_keep_attempt.add(row.id)
        elif isinstance(error, PermanentError):
            outcome.failed[row.id] = str(error)
        else:  # TransientError, AuthError: not accepted, and not the message's fault
            outcome.requeue[row.id] = str(error)
            outcome.requeue_keep_attempt.add(row.id)


def _apply(course: Course, rows: list[Claimed], outcome: Outcome, now: datetime) -> None:
    """Write every outcome back in bulk, and move sent subscribers along the course."""
    by_id = {row.id: row for row in rows}
    session = db.session

    def bulk(values: list[dict[str, Any]]) -> None:
        if values:
            # ORM bulk UPDATE by primary key: one executemany, not one query per row.
            session.execute(update(Delivery), values)

    # A provider message id per request, and a request is one lesson: usually one or two
    # statements for the whole slice.
    by_request: dict[tuple[str, str, int | None], list[int]] = defaultdict(list)
    request_of = outcome.request_of
    for delivery_id, message_id in outcome.sent.items():
        by_request[(message_id, by_id[delivery_id].slug, request_of.get(delivery_id))
                   ].append(delivery_id)
    if len(by_request) <= (20 if _is_postgres() else 4):
        for (message_id, slug, request_id), ids in by_request.items():
            values = dict(status=DeliveryStatus.SENT, sent_at=now, error="",
                          provider_message_id=message_id, content_hash=_hash(course, slug),
                          request_id=request_id)
            if _is_postgres():
                session.execute(MARK_SENT, {**values, "ids": _int_array(ids)})
            else:
                session.execute(update(Delivery).where(id_in(Delivery.id, ids)).values(**values)
                                .execution_options(synchronize_session=False))
    else:
        bulk([{"id": i, "status": DeliveryStatus.SENT, "sent_at": now, "error": "",
               "provider_message_id": m, "content_hash": _hash(course, by_id[i].slug),
               "request_id": request_of.get(i)}
              for i, m in outcome.sent.items()])
    bulk([{"id": i, "status": DeliveryStatus.FAILED, "error": e[:2000]}
          for i, e in outcome.failed.items()])
    bulk([{"id": i, "status": DeliveryStatus.UNCONFIRMED, "error": e[:2000],
           "request_id": request_of.get(i)}
          for i, e in outcome.unconfirmed.items()])
    bulk([{"id": i, "status": DeliveryStatus.CANCELLED, "error": e}
          for i, e in outcome.cancelled.items()])
    max_attempts = current_app.config["SEND_MAX_ATTEMPTS"]
    requeue = []
    for i, e in outcome.requeue.items():
        attempts = by_id[i].attempts - (1 if i in outcome.requeue_keep_attempt else 0)
        gave_up = attempts >= max_attempts and i not in outcome.requeue_keep_attempt
        # Put back for the tick to enqueue as soon as sending may go on (after a backoff
        # or a pause it checks first); a requeue that used an attempt waits its turn.
        again = None if i in outcome.requeue_keep_attempt else now
        requeue.append({"id": i, "error": e[:2000], "enqueued_at": again, "attempts": attempts,
                        "status": DeliveryStatus.FAILED if gave_up else DeliveryStatus.QUEUED})
    bulk(requeue)
    # Only what the provider took moves its subscriber on: an unconfirmed lesson holds
    # them at it until it is settled (course/unconfirmed.py).
    _advance(course, [by_id[i] for i in outcome.sent], now)
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

    Subscribers sharing a time zone and lesson share the next send time, so it is worked
    out once per (lesson, zone) pair; PostgreSQL then takes every subscriber in one
    statement, SQLite one UPDATE per pair. The ``next_position`` guard makes an admin
    resend of an older lesson move nobody. In a progress-gated course the next lesson
    waits for ``max_wait_days``; marking this one done brings it forward
    (``tracking.release_next``).
    """
    done: set[int] = set()
    if course.progress_gated and sent:
        # Marked done already (a delivery settled late by the stale sweep): no waiting.
        done = set(db.session.scalars(select(Delivery.id).where(
            id_in(Delivery.id, [row.id for row in sent]), Delivery.completed_at.is_not(None))))
    groups: dict[tuple[int, str, int], list[int]] = defaultdict(list)
    for row in sent:
        if row.next_position == row.position:
            wait = course.days_before(row.position + 1)
            if course.progress_gated and row.id not in done:
                wait = max(course.max_wait_days, wait)
            groups[(row.position, row.timezone, wait)].append(row.subscriber_id)
    if not groups:
        return
    # When each group's next lesson is due; None after the last lesson (finished).
    due: dict[tuple[int, str, int], datetime | None] = {
        (position, zone, wait): None if course.lesson_at(position + 1) is None
        else next_send_time(now, zone, course.rules, days=wait)
        for position, zone, wait in groups}
    if _is_postgres():
        _advance_postgres(groups, due, now)
        return
    for key, subscriber_ids in groups.items():
        position, next_at = key[0], due[key]
        where = and_(id_in(Subscriber.id, subscriber_ids),
                     Subscriber.next_position == position)
        if next_at is None:
            values: dict[str, Any] = dict(status=Status.FINISHED, finished_at=now,
                                          next_send_at=None, next_position=position + 1)
            where = and_(where, Subscriber.status == Status.ACTIVE)
        else:
            values = dict(next_position=position + 1, next_send_at=next_at)
        db.session.execute(update(Subscriber).where(where).values(**values)
                           .execution_options(synchronize_session=False))


def _advance_postgres(groups: dict[tuple[int, str, int], list[int]],
                      due: dict[tuple[int, str, int], datetime | None], now: datetime) -> None:
    ids: list[int] = []
    indexes: list[int] = []
    positions: list[int] = []
    next_at: list[str] = []
    last: list[str] = []
    for n, (key, subscriber_ids) in enumerate(groups.items(), start=1):
        at = due[key]
        ids += subscriber_ids
        indexes += [n] * len(subscriber_ids)
        positions.append(key[0])
        next_at.append(at.astimezone(UTC).strftime('"%Y-%m-%d %H:%M:%S.%f"') if at else "NULL")
        last.append("t" if at is None else "f")
    db.session.execute(ADVANCE, {
        "ids": _int_array(ids), "groups": _int_array(indexes),
        "positions": _int_array(positions), "next_send_at": "{" + ",".join(next_at) + "}",
        "last": "{" + ",".join(last) + "}", "now": now, "updated": utcnow(),
        "finished": Status.FINISHED, "active": Status.ACTIVE})


def claimed_rows(ids: Sequence[int]) -> list[Claimed]:
    """The deliveries ``ids`` with what sending or advancing them needs, ordered by id."""
    return _claimed_rows(ids)


def advance(sent: list[Claimed], now: datetime) -> None:
    """Move these subscribers past the lesson of each delivery (see ``_advance``)."""
    _advance(current_course(), sent, now)


def _claimed_rows(ids: Sequence[int]) -> list[Claimed]:
    return [Claimed(**r._mapping) for r in db.session.execute(
        select(Delivery.id, Delivery.subscriber_id, Delivery.lesson_slug.label("slug"),
               Delivery.position, Delivery.attempts, Subscriber.email, Subscriber.name,
               Subscriber.status, Subscriber.timezone, Subscriber.next_position)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(id_in(Delivery.id, ids))
        .order_by(Delivery.id)
    )]


def resend(ids: Sequence[int],
           before_commit: Callable[[list[tuple[int, int, int]]], None] | None = None) -> int:
    """Put failed, unconfirmed or stuck deliveries back in the queue (an admin's decision).

    Only for subscribers who still take mail (not unsubscribed, bounced or complained),
    finished or not: the send path sends a queued lesson to anyone else, so nothing
    requeued here is cancelled later. ``before_commit`` is given the (delivery id,
    subscriber id, position) of each delivery actually requeued, inside the same
    transaction, so what it adds (the audit log) is committed with the requeue and names
    exactly the deliveries that changed.
    """
    takes_mail = ~select(Subscriber.id).where(
        Subscriber.id == Delivery.subscriber_id, Subscriber.status.in_(NO_MAIL)).exists()
    requeued: list[tuple[int, int, int]] = []
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), 1000):
        requeued += [(i, s, p) for i, s, p in db.session.execute(
            update(Delivery)
            .where(id_in(Delivery.id, wanted[start:start + 1000]),
                   Delivery.status.in_([DeliveryStatus.FAILED, DeliveryStatus.UNCONFIRMED,
                                        DeliveryStatus.SENDING]), takes_mail)
            .values(status=DeliveryStatus.QUEUED, attempts=0, error="", enqueued_at=None)
            .returning(Delivery.id, Delivery.subscriber_id, Delivery.position)
            .execution_options(synchronize_session=False)
        )]
    if before_commit is not None and requeued:
        before_commit(requeued)
    db.session.commit()
    return len(requeued)


def warm_up_worker() -> None:
    """Load, in a worker about to fork a work horse per job, what every send job needs.

    The mail backend's modules (the SendGrid client) and every lesson rendered are then
    inherited by each horse instead of imported and rendered again in each (about 30 ms
    a job), and the worker's own objects are frozen out of the garbage collector's
    passes, so horses neither scan nor copy them. Failing here only costs that time.
    """
    try:
        get_backend(current_app.config)
        course = current_course()
        for lesson in course.lessons:
            render_lesson(course, lesson)
    except Exception:  # noqa: BLE001 - a job will hit and report the same problem
        log.warning("could not prepare the send path ahead of jobs", exc_info=True)
    gc.freeze()


def stuck_sending(older_than: timedelta = timedelta(minutes=10)) -> list[Delivery]:
    """Deliveries claimed but never finished (a crash mid-send): shown to the admin."""
    cutoff = utcnow() - older_than
    return list(db.session.scalars(
        db.select(Delivery).where(
            Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_at < cutoff
        )
    ))



