"""Opens and clicks: one Redis RPUSH per hit, moved into the database in bulk by a flusher.

The pixel and click endpoints must stay fast under a burst (a lesson going to thousands
of inboxes whose proxies all fetch the pixel at once), so a hit only appends a compact
record to a Redis list. ``flush`` (an RQ job every few seconds, see ``workers/cron.py``)
renames that list to a *processing* list and writes it to the database a batch per
transaction, trimming each batch from Redis only after its commit. So:

* a failed database write leaves the batch in Redis for the next flush;
* a crash between commit and trim replays the batch, and replays count nothing twice:
  each hit carries a random id stored as the event's ``provider_event_id``
  (``hit:<id>``, unique), inserted with ON CONFLICT DO NOTHING, and delivery counters
  are raised only by the rows that insert actually added;
* when Redis cannot be reached at hit time, or refuses the RPUSH, the hit is written
  straight to the database through the same idempotent path (and Redis is left alone for
  a few seconds).

Buffered hits are as durable as Redis itself: run it with ``appendonly yes`` so a restart
keeps them. Without that, a Redis crash loses the hits of the last few seconds (the flush
runs every 5 s); sends, completions and everything else never wait in Redis.

On a delivery, ``open_count`` and ``click_count`` count every hit and ``opened_at`` is
the first open of any kind (a click proves an open); ``human_opened_at`` and
``clicked_at`` only count people. Which hits are machines is decided in
``course.machines`` when the hit is stored, using the delivery's ``sent_at``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from flask import Flask, current_app
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry
from sqlalchemy import Table, bindparam, case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from . import machines, webhooks_out
from .extensions import db, id_in
from .models import Delivery, Event, EventKind, Subscriber
from .queue import redis_connection

log = logging.getLogger(__name__)

INBOX = "minicourse:tracking:inbox"
PROCESSING = "minicourse:tracking:processing"
LOCK = "minicourse:tracking:flush-lock"
LOCK_SECONDS = 120
BATCH = 1000  # hits per database transaction
REDIS_BACKOFF_SECONDS = 5.0  # after a failed RPUSH, write to the database for this long
HIT_PREFIX = "hit:"

# Trim a stored batch and extend the lock, but only while the lock is still ours.
_TRIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Hit:
    """One open or click as it arrived: what the flusher needs, and nothing else."""

    kind: str  # EventKind.OPEN or EventKind.CLICK
    delivery_id: int
    at: float  # Unix seconds
    user_agent: str
    hit_id: str
    url: str | None = None
    canary: bool = False

    def encode(self) -> bytes:
        return json.dumps([self.kind, self.delivery_id, self.at, self.user_agent,
                           self.hit_id, self.url, int(self.canary)],
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Hit | None:
        """The hit, or None for a record nobody could store (logged and dropped)."""
        try:
            kind, delivery_id, at, ua, hit_id, url, canary = json.loads(raw)
            if kind not in (EventKind.OPEN, EventKind.CLICK) or type(delivery_id) is not int:
                raise ValueError(f"bad kind or delivery {kind!r} {delivery_id!r}")
            return cls(kind, delivery_id, float(at), str(ua)[:512], str(hit_id)[:64],
                       url if isinstance(url, str) else None, bool(canary))
        except (ValueError, TypeError) as exc:
            log.error("dropping an unreadable tracking record %r: %s", raw[:200], exc)
            return None


def new_hit(kind: str, delivery_id: int, user_agent: str, url: str | None = None,
            canary: bool = False) -> Hit:
    return Hit(kind, delivery_id, time.time(), user_agent[:512], os.urandom(12).hex(), url,
               canary)


# At hit time


class _Sender:
    """This thread's Redis connection for hits: it sends the RPUSH at once and reads the
    reply later, once the response has gone to the reader (``confirm``, run when the
    server closes the response), by when the reply has usually arrived. So a request never
    sits waiting for Redis, yet every hit is acknowledged: one Redis refused, or whose
    connection broke before the reply, is written to the database instead (idempotently:
    if Redis had it after all, the flush adds nothing).
    """

    def __init__(self, app: Flask):
        self.app = app
        self.pid = os.getpid()
        client = Redis.from_url(app.config["REDIS_URL"], socket_timeout=0.5,
                                socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        self.conn = client.connection_pool.make_connection()
        self.waiting: list[Hit] = []

    def send(self, hit: Hit) -> None:
        """Send the RPUSH; raises RedisError if it could not be written."""
        self.confirm()  # normally nothing left: the last response's close read its reply
        self.conn.send_packed_command(self.conn.pack_command("RPUSH", INBOX, hit.encode()),
                                      check_health=False)
        self.waiting.append(hit)

    def confirm(self) -> None:
        """Read the replies still due; whatever Redis did not take goes to the database."""
        refused: list[Hit] = []
        try:
            while self.waiting:
                try:
                    self.conn.read_response()
                except ResponseError as exc:  # e.g. OOM: Redis is full
                    log.warning("tracking: Redis refused a hit (%s)", exc)
                    refused.append(self.waiting[0])
                self.waiting.pop(0)
        except (RedisError, OSError) as exc:
            refused += self.waiting
            self.waiting = []
            self.conn.disconnect()
            _redis_down(self.app, exc)
        if refused:
            _store_now(self.app, refused)


def _sender(app: Flask) -> _Sender:
    local = app.extensions.get("minicourse_hit_senders")
    if local is None:
        local = app.extensions.setdefault("minicourse_hit_senders", threading.local())
    sender: _Sender | None = getattr(local, "sender", None)
    if sender is None or sender.pid != os.getpid():  # new thread, or a forked process
        sender = local.sender = _Sender(app)
    return sender


def _redis_down(app: Flask, exc: Exception) -> None:
    """Leave Redis alone for a few seconds: hits go straight to the database meanwhile."""
    app.extensions["minicourse_redis_down_until"] = time.monotonic() + REDIS_BACKOFF_SECONDS
    log.warning("tracking: Redis unreachable (%s); writing hits to the database", exc)


def _store_now(app: Flask, hits: list[Hit]) -> None:
    with app.app_context():
        try:
            store(hits)
        except SQLAlchemyError:
            db.session.rollback()
            log.exception("tracking: could not store %d hits: %s", len(hits),
                          [h.encode().decode() for h in hits])


def record(app: Flask, hit: Hit) -> Callable[[], None] | None:
    """Buffer a hit in Redis, or store it at once if Redis is unreachable. Never raises.

    Returns the function to call once the response has been sent (it reads Redis's
    reply), or None when there is nothing to wait for. Needs no app context (the pixel's
    fast path has none): the app is passed in.
    """
    try:
        if time.monotonic() >= app.extensions.get("minicourse_redis_down_until", 0.0):
            sender = _sender(app)
            try:
                sender.send(hit)
                return _confirm_quietly(sender)
            except (RedisError, OSError) as exc:
                sender.conn.disconnect()
                _redis_down(app, exc)
        _store_now(app, [hit])
    except Exception:  # a reader must get their image or their link whatever happens
        log.exception("tracking: could not record hit %s", hit.encode().decode())
    return None


def _confirm_quietly(sender: _Sender) -> Callable[[], None]:
    def confirm() -> None:
        try:
            sender.confirm()
        except Exception:  # after the response: nobody to show an error to
            log.exception("tracking: confirming hits failed")

    return confirm


# In the flusher


def flush(batch: int = BATCH) -> int:
    """Move buffered hits into the database; returns how many events were added.

    Leftovers of an earlier flush that failed go first; then everything buffered so far.
    Hits arriving meanwhile wait for the next flush. One flusher at a time (a lock).
    """
    conn = redis_connection()
    token = uuid.uuid4().hex
    if not conn.set(LOCK, token, nx=True, ex=LOCK_SECONDS):
        return 0
    stored = 0
    try:
        stored += _drain(conn, token, batch)
        try:
            taken = conn.renamenx(INBOX, PROCESSING)
        except ResponseError:  # nothing buffered
            taken = False
        if taken:
            stored += _drain(conn, token, batch)
    finally:
        conn.eval(_RELEASE, 1, LOCK, token)
    return stored


def _drain(conn: Redis, token: str, batch: int) -> int:
    """Store the processing list a batch at a time; a failure leaves the rest in place."""
    stored = 0
    while True:
        raw = conn.lrange(PROCESSING, 0, batch - 1)
        if not raw:
            return stored
        hits = [h for h in (Hit.decode(r) for r in raw) if h is not None]
        try:
            stored += store(hits)
        except SQLAlchemyError:
            db.session.rollback()
            log.exception("tracking: could not store %d hits; they stay buffered", len(raw))
            raise
        if not conn.eval(_TRIM, 2, LOCK, PROCESSING, token, len(raw), LOCK_SECONDS):
            log.warning("tracking: flush lock lost; stopping (the next flush carries on)")
            return stored


def pending() -> int:
    """How many hits wait in Redis (for the admin's queue health and for tests)."""
    conn = redis_connection()
    return int(conn.llen(INBOX)) + int(conn.llen(PROCESSING))


# Into the database


def _insert(model: Any) -> Any:
    return pg_insert(model) if db.engine.dialect.name == "postgresql" else sqlite_insert(model)


def store(hits: Sequence[Hit]) -> int:
    """Write hits as events and fold them into their deliveries, in one transaction.

    Idempotent: a hit already stored (same ``hit_id``) adds nothing. Hits for deliveries
    that no longer exist are dropped. Returns how many events were added.
    """
    if not hits:
        return 0
    stmt = (
        select(Delivery.id, Delivery.subscriber_id, Delivery.sent_at, Delivery.human_opened_at,
               Delivery.lesson_slug, Delivery.position, Subscriber.email)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(id_in(Delivery.id, {h.delivery_id for h in hits}))
        .order_by(Delivery.id)
    )
    if db.engine.dialect.name == "postgresql":
        # Locked until the commit, so what is read here (no human open yet) stays true and
        # "lesson.opened" is announced once. SQLite lets only one writer in at a time anyway.
        stmt = stmt.with_for_update(of=Delivery)
    known = {row.id: row for row in db.session.execute(stmt)}
    window = float(current_app.config["MACHINE_OPEN_SECONDS"])
    rows: list[dict[str, Any]] = []
    for hit in sorted(hits, key=lambda h: h.at):
        delivery = known.get(hit.delivery_id)
        if delivery is None:
            continue
        at = datetime.fromtimestamp(hit.at, UTC)
        if hit.kind == EventKind.OPEN:
            machine = machines.is_machine_open(hit.user_agent, at, delivery.sent_at, window)
        else:
            machine = machines.is_machine_click(hit.user_agent, hit.canary)
        rows.append(dict(subscriber_id=delivery.subscriber_id, delivery_id=hit.delivery_id,
                         kind=hit.kind, occurred_at=at, url=hit.url, machine=machine,
                         user_agent=hit.user_agent, provider_event_id=HIT_PREFIX + hit.hit_id))
    added: set[str] = set()
    if rows:
        # One cached statement, sent as multi-row batches (SQLAlchemy's insertmanyvalues).
        added.update(db.session.execute(
            _insert(Event).on_conflict_do_nothing(index_elements=["provider_event_id"])
            .returning(Event.provider_event_id), rows,
        ).scalars())
    per = _per_delivery([r for r in rows if r["provider_event_id"] in added])
    opened = [i for i, p in per.items()
              if p["b_human"] is not None and known[i].human_opened_at is None]
    if opened and webhooks_out.enabled():  # in this transaction: sent only if it commits
        webhooks_out.emit_many("lesson.opened", [
            webhooks_out.lesson_data(
                i, known[i].subscriber_id, known[i].email, known[i].lesson_slug,
                known[i].position, at=webhooks_out.iso(per[i]["b_human"]),
                source="click" if per[i]["human_kind"] == EventKind.CLICK else "pixel")
            for i in opened
        ])
    _fold(per)
    db.session.commit()
    return sum(p["b_opens"] + p["b_clicks"] for p in per.values())


def _per_delivery(new: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each delivery's counts and first times among the events just added (in time order)."""
    per: dict[int, dict[str, Any]] = {}
    for r in new:
        p = per.setdefault(r["delivery_id"], dict(
            b_id=r["delivery_id"], b_opens=0, b_clicks=0, b_first=r["occurred_at"],
            b_click_first=int(r["kind"] == EventKind.CLICK), b_human=None, b_click=None,
            human_kind=None))
        if r["kind"] == EventKind.OPEN:
            p["b_opens"] += 1
        else:
            p["b_clicks"] += 1
        if r["machine"]:
            continue
        if p["b_human"] is None:
            p["b_human"], p["human_kind"] = r["occurred_at"], r["kind"]
        if r["kind"] == EventKind.CLICK and p["b_click"] is None:
            p["b_click"] = r["occurred_at"]
    return per


def _fold(per: dict[int, dict[str, Any]]) -> None:
    """Raise each delivery's counters and first times, one executemany for the batch."""
    if not per:
        return
    t = cast(Table, Delivery.__table__)

    def earliest(column: Any, param: str) -> Any:
        # The earlier of the stored time and this batch's (a NULL parameter keeps the column).
        value = bindparam(param, type_=column.type)
        return case((column.is_(None) | (column > value), value), else_=column)

    db.session.execute(
        update(t).where(t.c.id == bindparam("b_id")).values(
            open_count=t.c.open_count + bindparam("b_opens") + case(
                (t.c.opened_at.is_(None), bindparam("b_click_first")), else_=0),
            click_count=t.c.click_count + bindparam("b_clicks"),
            opened_at=earliest(t.c.opened_at, "b_first"),
            human_opened_at=earliest(t.c.human_opened_at, "b_human"),
            clicked_at=earliest(t.c.clicked_at, "b_click"),
        ),
        [{k: v for k, v in p.items() if k.startswith("b_")} for p in per.values()],
    )
