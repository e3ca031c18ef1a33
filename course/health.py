"""Is the pipeline working? The last tick, the queues, the workers and the sending rates.

The admin dashboard shows these figures and turns the worrying ones into warnings. The
gathering (:func:`pipeline_health`, :func:`sending_rates`) reads the database and Redis;
the judging (:func:`warnings`) is a pure function of what was gathered, so every threshold
is tested on plain data.

The time of the last tick lives in the database (``AppState`` ``last_tick_at``), like the
pause switch: it is a fact every process must agree on and it survives a Redis flush.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis, RedisError
from rq import Queue
from rq.registry import FailedJobRegistry
from rq.worker_registration import WORKERS_BY_QUEUE_KEY
from sqlalchemy import case, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .extensions import db
from .models import AppState, Delivery, Event, EventKind
from .rehearsal import of_real_subscribers
from .timeutil import utcnow

LAST_TICK_KEY = "last_tick_at"
# The tick runs every minute; three missed in a row means the cron or every worker is down.
TICK_STALE_AFTER = timedelta(minutes=3)
# Rates are measured over the last week: long enough for a small course to send a few
# hundred lessons, short enough that a bad list import shows up within days.
RATE_WINDOW = timedelta(days=7)
# Mailbox providers' limits (Gmail and Yahoo's bulk sender rules): above these, mail
# starts going to spam or is refused.
BOUNCE_LIMIT = 0.02
COMPLAINT_LIMIT = 0.001


# --- the last tick ------------------------------------------------------------------------


def record_tick(now: datetime | None = None) -> None:
    """Note that a tick finished just now (one upsert, safe from any number of ticks)."""
    now = (now or utcnow()).astimezone(UTC)
    insert = pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(AppState).values(key=LAST_TICK_KEY, value=now.isoformat(), updated_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"], set_={"value": now.isoformat(), "updated_at": now}
    )
    db.session.execute(stmt)
    db.session.commit()


def last_tick_at() -> datetime | None:
    """When the last tick finished, or None if no tick has ever been recorded."""
    row = db.session.get(AppState, LAST_TICK_KEY)
    if row is None:
        return None
    try:
        value = datetime.fromisoformat(row.value)
    except ValueError:
        return row.updated_at
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- queues and workers -------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineHealth:
    """What the pipeline looks like right now. Counts are None when Redis did not answer."""

    now: datetime
    last_tick_at: datetime | None = None
    paused: dict[str, Any] | None = None
    queued: dict[str, int] = field(default_factory=dict)  # jobs waiting, per queue
    failed: dict[str, int] = field(default_factory=dict)  # RQ's failed jobs, per queue
    workers: int | None = None  # live workers listening on our queues
    hits_waiting: int | None = None  # opens and clicks buffered in Redis
    redis_error: str = ""

    @property
    def tick_age(self) -> timedelta | None:
        return None if self.last_tick_at is None else self.now - self.last_tick_at

    @property
    def queued_total(self) -> int:
        return sum(self.queued.values())

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


def live_workers(conn: Redis, queue_names: tuple[str, ...]) -> int:
    """Workers on any of our queues whose heartbeat key still exists.

    RQ leaves a killed worker in its registry until someone cleans it up; its own key
    expires with its heartbeat, so counting existing keys counts the living only.
    """
    keys: set[bytes] = set()
    for name in queue_names:
        keys.update(conn.smembers(WORKERS_BY_QUEUE_KEY % name))  # type: ignore[arg-type]
    return int(conn.exists(*keys)) if keys else 0


def pipeline_health(now: datetime | None = None) -> PipelineHealth:
    """Gather the live figures: cheap (a few Redis commands and two primary-key reads)."""
    from .queue import QUEUES, redis_connection
    from .sendstate import paused
    from .tracking_buffer import pending

    now = now or utcnow()
    found: dict[str, Any] = {"now": now, "last_tick_at": last_tick_at(), "paused": paused()}
    try:
        conn = redis_connection()
        queues = [Queue(name, connection=conn) for name in QUEUES]
        found["queued"] = {q.name: q.count for q in queues}
        found["failed"] = {q.name: FailedJobRegistry(queue=q).count for q in queues}
        found["workers"] = live_workers(conn, QUEUES)
        found["hits_waiting"] = pending()
    except RedisError as exc:
        found.update(queued={}, failed={}, workers=None, hits_waiting=None,
                     redis_error=str(exc) or type(exc).__name__)
    return PipelineHealth(**found)


# --- sending rates ------------------------------------------------------------------------


@dataclass(frozen=True)
class SendingRates:
    """Lessons sent, hard bounces and spam complaints over the last ``days`` days.

    Bounces and complaints are provider events (SendGrid's ``bounce`` and ``spamreport``)
    that arrived in the window; ``blocked`` and ``dropped`` are not bounces (the first is
    temporary, the second was never sent). A bounce of a confirmation email counts too,
    though only lessons count as sent, so the rate errs on the side of warning.
    """

    days: int
    sent: int = 0
    bounced: int = 0
    complained: int = 0

    @property
    def bounce_rate(self) -> float | None:
        return self.bounced / self.sent if self.sent else None

    @property
    def complaint_rate(self) -> float | None:
        return self.complained / self.sent if self.sent else None


def sending_rates(now: datetime | None = None, window: timedelta = RATE_WINDOW) -> SendingRates:
    """Two aggregate queries: lessons sent in the window, and bounce and complaint events."""
    since = (now or utcnow()) - window
    sent = db.session.scalar(
        db.select(func.count()).select_from(Delivery)
        .where(Delivery.sent_at >= since, of_real_subscribers(Delivery.subscriber_id))
    )
    bounced, complained = db.session.execute(
        db.select(
            func.coalesce(func.sum(case((Event.kind == EventKind.BOUNCE, 1), else_=0)), 0),
            func.coalesce(func.sum(case((Event.kind == EventKind.SPAM_REPORT, 1), else_=0)), 0),
        ).where(Event.kind.in_([EventKind.BOUNCE, EventKind.SPAM_REPORT]),
                Event.occurred_at >= since, of_real_subscribers(Event.subscriber_id))
    ).one()
    return SendingRates(window.days, int(sent or 0), int(bounced), int(complained))


# --- warnings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One thing the course owner should look at, in a sentence."""

    key: str
    text: str


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f}%" if rate >= 0.001 else f"{rate * 100:.2f}%"


def age_text(age: timedelta) -> str:
    """``42 s``, ``5 min``, ``3 h``, ``2 days``: how long ago, roughly."""
    seconds = max(0, int(age.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def warnings(health: PipelineHealth, rates: SendingRates | None) -> list[Alert]:
    """What needs the owner's attention, most urgent first."""
    found: list[Alert] = []
    if health.redis_error:
        found.append(Alert("redis-down", "Redis does not answer, so nothing can be queued "
                             f"or sent: {health.redis_error}"))
    if health.paused is not None:
        found.append(Alert("paused", "Sending is paused: "
                             f"{health.paused.get('reason', 'no reason given')}."))
    age = health.tick_age
    if age is None:
        found.append(Alert("tick-stale", "No scheduler tick has been recorded yet. Is "
                             "the cron process (rq cron workers/cron.py) running, and a worker?"))
    elif age > TICK_STALE_AFTER:
        found.append(Alert("tick-stale", f"The last scheduler tick was {age_text(age)} ago "
                             "(it should run every minute): check the cron process and the "
                             "workers. No lessons are scheduled until it runs."))
    if health.workers == 0 and health.queued_total:
        found.append(Alert("no-workers", f"{health.queued_total} jobs are waiting and no "
                             "worker is running."))
    if health.failed_total:
        found.append(Alert("failed-jobs", f"{health.failed_total} job"
                             f"{'' if health.failed_total == 1 else 's'} failed in the queue "
                             "(RQ's failed job registry); the worker logs say why."))
    if rates is not None and rates.bounce_rate is not None and rates.bounce_rate > BOUNCE_LIMIT:
        found.append(Alert("bounce-rate", f"Bounce rate {_percent(rates.bounce_rate)} over "
                             f"the last {rates.days} days ({_count(rates.bounced, 'bounce')}, "
                             f"{rates.sent} lessons sent), above "
                             f"{_percent(BOUNCE_LIMIT)}: mailbox providers may start "
                             "refusing our mail. Check where these addresses came from."))
    if (rates is not None and rates.complaint_rate is not None
            and rates.complaint_rate > COMPLAINT_LIMIT):
        found.append(Alert("complaint-rate", "Spam complaint rate "
                             f"{_percent(rates.complaint_rate)} over the last {rates.days} "
                             f"days ({_count(rates.complained, 'complaint')}, "
                             f"{rates.sent} lessons sent), "
                             f"above {_percent(COMPLAINT_LIMIT)}: lessons may start landing "
                             "in spam folders."))
    return found
