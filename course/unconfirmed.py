"""Unconfirmed lessons: requests that were written but never answered, and settling them.

A delivery is ``unconfirmed`` when its request reached the network and no answer came
back (a reset, a close or a read timeout after the write; a worker killed or timed out
while waiting for the answer). SendGrid may or may not have taken it, so it is never
resent blindly (invariant 1) nor skipped (invariant 2): its subscriber waits at that
lesson until it is settled, and the tick (``settle``) and the event webhook
(``after_events``) settle it without a person in the normal case:

- any event for the delivery (SendGrid's ``processed``, ``deferred``, ``delivered``,
  ``bounce``, ``open``, ``click`` ..., or our own open, click or "done") proves it was
  taken: ``sent``, and the subscriber moves on; ``dropped`` alone: ``failed``;
- with no event for it while events for later requests (request ids only grow) have
  been coming for ``UNCONFIRMED_WINDOW_SECONDS`` (the watermark, below), it was not
  taken: the same row is queued again, so it can still go out only once;
- past the window with no such evidence (SMTP, the outbox, SendGrid without its Event
  Webhook, or nothing sent since), ``UNCONFIRMED_WITHOUT_EVENTS`` decides: ``hold`` it
  for a person (the Deliveries page: "it arrived" / "send it again"), or ``resend``.

Also here: the stale-``sending`` sweep, which turns what a dead worker left ``sending``
into ``unconfirmed`` only where the send journal (``course.send_requests``) shows its
request was written, and queues the rest again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import send_requests
from .extensions import affected_rows, db, id_in
from .models import AppState, Delivery, DeliveryStatus, Event, EventKind
from .sending import advance, claimed_rows
from .timeutil import utcnow

log = logging.getLogger(__name__)

WATERMARK_KEY = "provider_events_watermark"
# Events that prove the provider took the message (or that it reached the reader).
ARRIVED = (EventKind.PROCESSED, EventKind.DEFERRED, EventKind.DELIVERED, EventKind.BOUNCE,
           EventKind.BLOCKED, EventKind.OPEN, EventKind.CLICK, EventKind.COMPLETE,
           EventKind.SPAM_REPORT, EventKind.UNSUBSCRIBE, EventKind.GROUP_UNSUBSCRIBE)
SWEPT = "the worker stopped while sending it"
NOT_ACCEPTED = "not accepted: no event came for it while events came for later requests"


@dataclass
class Settled:
    sent: int = 0
    failed: int = 0
    requeued: int = 0
    held: int = 0  # past the window, waiting for a person


# --- the stale-sending sweep --------------------------------------------------------------


def sweep_stale_sending(now: datetime) -> int:
    """Deliveries left ``sending`` by a worker that died mid-send: ``unconfirmed`` if their
    request was written (it may have been accepted), else queued again. Returns how many
    became unconfirmed.

    Past ``SENDING_STALE_SECONDS`` nobody is sending them any more: it is longer than a
    send job may live (``SEND_JOB_TIMEOUT``, after which RQ stops the job, and at worst
    kills its work horse a minute or so later; ``course.config`` refuses a shorter one),
    so no live worker can still send what is queued again here. The queued ones lose no
    attempt: nothing was sent.
    """
    cutoff = now - timedelta(seconds=current_app.config["SENDING_STALE_SECONDS"])
    stale = db.session.execute(
        select(Delivery.id, Delivery.claimed_at)
        .where(Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_at < cutoff)
    ).all()
    if not stale:
        send_requests.prune(now)
        db.session.commit()
        return 0
    # claimed_at < cutoff above: never NULL here.
    since = min(claimed for _, claimed in stale if claimed is not None)
    written = send_requests.written_requests((i for i, _ in stale), since)
    by_request: dict[int, list[int]] = {}
    for delivery_id, request_id in written.items():
        by_request.setdefault(request_id, []).append(delivery_id)
    unconfirmed = 0
    for request_id, ids in by_request.items():
        unconfirmed += affected_rows(db.session.execute(
            update(Delivery)
            # Still stale: a sweep running alongside may have queued it again meanwhile,
            # and a worker claimed it afresh.
            .where(id_in(Delivery.id, ids), Delivery.status == DeliveryStatus.SENDING,
                   Delivery.claimed_at < cutoff)
            .values(status=DeliveryStatus.UNCONFIRMED, request_id=request_id,
                    error=f"{SWEPT} (killed or crashed) after its request was written: "
                          "it may have been accepted")
            .execution_options(synchronize_session=False)))
    never_sent = [i for i, _ in stale if i not in written]
    for start in range(0, len(never_sent), 1000):
        db.session.execute(
            update(Delivery)
            .where(id_in(Delivery.id, never_sent[start:start + 1000]),
                   Delivery.status == DeliveryStatus.SENDING, Delivery.claimed_at < cutoff)
            .values(status=DeliveryStatus.QUEUED, enqueued_at=None,
                    attempts=Delivery.attempts - 1,  # the claim counted one
                    error=f"{SWEPT} before its request was written: queued again")
            .execution_options(synchronize_session=False))
    send_requests.prune(now)
    db.session.commit()
    log.warning("%d deliveries were left sending by a stopped worker: %d unconfirmed "
                "(their request was written), %d queued again", len(stale), unconfirmed,
                len(never_sent))
    return unconfirmed


# --- settling -----------------------------------------------------------------------------


def settle(now: datetime, ids: Sequence[int] | None = None, *, commit: bool = True) -> Settled:
    """Settle unconfirmed deliveries (``ids`` only, or all of them) from what is known.

    With ``ids`` (the webhook, for the deliveries its batch named) only the events are
    looked at; the whole sweep (the tick) also applies the window.
    """
    result = Settled()
    _settle_by_events(now, ids, result)
    if ids is None:
        _settle_by_window(now, result)
    if commit:
        db.session.commit()
    if result.sent or result.failed or result.requeued:
        log.info("unconfirmed deliveries settled: %d sent, %d failed, %d queued again, "
                 "%d held for a person", result.sent, result.failed, result.requeued,
                 result.held)
    return result


def _settle_by_events(now: datetime, ids: Sequence[int] | None, result: Settled) -> None:
    stmt = (select(Delivery.id, Event.kind, Event.occurred_at)
            .join(Event, Event.delivery_id == Delivery.id)
            .where(Delivery.status == DeliveryStatus.UNCONFIRMED,
                   Event.kind.in_([*ARRIVED, EventKind.DROPPED])))
    if ids is not None:
        if not ids:
            return
        stmt = stmt.where(id_in(Delivery.id, list(ids)))
    arrived: dict[int, datetime] = {}
    dropped: set[int] = set()
    for delivery_id, kind, occurred_at in db.session.execute(stmt):
        if kind == EventKind.DROPPED:
            dropped.add(delivery_id)
        elif delivery_id not in arrived or occurred_at < arrived[delivery_id]:
            arrived[delivery_id] = occurred_at
    if arrived:
        sent = mark_sent(arrived, now, "")
        result.sent += len(sent)
    dropped -= set(arrived)
    if dropped:
        result.failed += affected_rows(db.session.execute(
            update(Delivery)
            .where(id_in(Delivery.id, sorted(dropped)),
                   Delivery.status == DeliveryStatus.UNCONFIRMED)
            .values(status=DeliveryStatus.FAILED, error="dropped by the provider")
            .execution_options(synchronize_session=False)))


def mark_sent(when: Mapping[int, datetime], now: datetime, note: str) -> list[int]:
    """Unconfirmed deliveries ``when`` names become ``sent`` (at the time given for each)
    and their subscribers move on. Returns those that changed."""
    changed: list[int] = []
    by_time: dict[datetime, list[int]] = {}
    for delivery_id, at in when.items():
        by_time.setdefault(at, []).append(delivery_id)
    for at, ids in by_time.items():
        changed += db.session.scalars(
            update(Delivery)
            .where(id_in(Delivery.id, ids), Delivery.status == DeliveryStatus.UNCONFIRMED)
            .values(status=DeliveryStatus.SENT, sent_at=at, error=note)
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)).all()
    if changed:
        advance(claimed_rows(sorted(changed)), now)
    return changed


def _settle_by_window(now: datetime, result: Settled) -> None:
    window = timedelta(seconds=current_app.config["UNCONFIRMED_WINDOW_SECONDS"])
    old = db.session.execute(
        select(Delivery.id, Delivery.request_id)
        .where(Delivery.status == DeliveryStatus.UNCONFIRMED, Delivery.claimed_at < now - window)
    ).all()
    if not old:
        return
    marks, cutoff = watermark(), (now - window).timestamp()
    passed = [i for i, request_id in old if request_id is not None
              and (at := passed_at(marks, request_id)) is not None and at <= cutoff]
    rest = [i for i, request_id in old if i not in set(passed)]
    result.requeued += requeue(passed, NOT_ACCEPTED)
    if current_app.config["UNCONFIRMED_WITHOUT_EVENTS"] == "resend":
        result.requeued += requeue(rest, "no event came for it within the window: sent "
                                         "again (UNCONFIRMED_WITHOUT_EVENTS=resend)")
    else:
        result.held += len(rest)


def requeue(ids: Sequence[int], why: str) -> int:
    """Queue unconfirmed deliveries again, the same rows: they still go out only once."""
    count = 0
    for start in range(0, len(ids), 1000):
        count += affected_rows(db.session.execute(
            update(Delivery)
            .where(id_in(Delivery.id, list(ids[start:start + 1000])),
                   Delivery.status == DeliveryStatus.UNCONFIRMED)
            .values(status=DeliveryStatus.QUEUED, enqueued_at=None, error=why)
            .execution_options(synchronize_session=False)))
    return count


def held(now: datetime) -> tuple[int, int]:
    """(unconfirmed lessons, of which past the window): each holds its subscriber."""
    window = timedelta(seconds=current_app.config["UNCONFIRMED_WINDOW_SECONDS"])
    total, late = db.session.execute(
        select(func.count(), func.count().filter(Delivery.claimed_at < now - window))
        .where(Delivery.status == DeliveryStatus.UNCONFIRMED)).one()
    return int(total or 0), int(late or 0)


# --- the watermark ------------------------------------------------------------------------
#
# Events arrive in the order SendGrid took the requests, which is not quite the order of
# their ids (a request started later can be taken a moment earlier), and they may lag a
# long way behind. So the watermark keeps *when* it passed each request: a checkpoint
# (request id, time) each time it rises, at most every ``window / 20``. A lesson is
# known untaken only once the watermark passed its request a whole window ago: had
# SendGrid taken it, its events would have come along with those of its neighbours.

MAX_CHECKPOINTS = 1000


def watermark() -> list[tuple[int, float]]:
    """The checkpoints: (request id, epoch seconds when events first came past it)."""
    row = db.session.get(AppState, WATERMARK_KEY)
    if row is None:
        return []
    try:
        marks = [(int(i), float(t)) for i, t in json.loads(row.value)]
    except (ValueError, TypeError):
        return []
    return marks


def passed_at(marks: list[tuple[int, float]], request_id: int) -> float | None:
    """When events first came for a request later than ``request_id``, if they have."""
    for mark, at in marks:
        if mark > request_id:
            return at
    return None


def raise_watermark(request_id: int, now: datetime) -> None:
    """Record that events came for ``request_id`` at ``now`` (if it is a new high)."""
    stmt = select(AppState).where(AppState.key == WATERMARK_KEY)
    row = db.session.scalars(stmt.with_for_update()).first()
    marks = watermark() if row is not None else []
    if marks and marks[-1][0] >= request_id:
        return
    step = current_app.config["UNCONFIRMED_WINDOW_SECONDS"] / 20
    stamp = now.timestamp()
    if marks and stamp - marks[-1][1] < step:
        return  # recorded at the next checkpoint: later is only ever safer
    marks = (marks + [(request_id, stamp)])[-MAX_CHECKPOINTS:]
    value = json.dumps(marks)
    if row is None:
        insert = pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert
        db.session.execute(insert(AppState).values(key=WATERMARK_KEY, value=value,
                                                   updated_at=utcnow())
                           .on_conflict_do_nothing(index_elements=["key"]))
    else:
        row.value = value


def after_events(deliveries: Iterable[Any], now: datetime) -> None:
    """The webhook's part: raise the watermark to the newest request the batch's events
    name, and settle the batch's unconfirmed deliveries now (in the webhook's
    transaction; it commits). ``deliveries`` are rows with ``id``, ``status`` and
    ``request_id``."""
    rows = list(deliveries)
    newest = max((r.request_id for r in rows if r.request_id is not None), default=None)
    if newest is not None:
        raise_watermark(newest, now)
    waiting = [r.id for r in rows if r.status == DeliveryStatus.UNCONFIRMED]
    if waiting:
        db.session.flush()
        settle(now, waiting, commit=False)
