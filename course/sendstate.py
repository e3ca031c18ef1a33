"""Pipeline-wide sending state: the pause switch, the outage backoff and the shared rate.

All are shared by every worker on every host. The pause (credentials refused: a person
must act) and the backoff (the provider is down, busy or rate-limiting us: it passes by
itself) live in the database, the source of truth the admin sees; the rate is a
reservation clock in Redis.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import delete, update

from .extensions import affected_rows, db
from .models import AppState, Delivery, DeliveryStatus
from .timeutil import utcnow

log = logging.getLogger(__name__)

PAUSE_KEY = "sending_paused"
BACKOFF_KEY = "sending_backoff"


def paused() -> dict[str, Any] | None:
    """Why sending is paused ({"reason", "since"}), or None while it runs."""
    row = db.session.get(AppState, PAUSE_KEY)
    if row is None:
        return None
    try:
        data = json.loads(row.value)
    except ValueError:
        data = {"reason": row.value}
    data.setdefault("since", row.updated_at.isoformat())
    return data if isinstance(data, dict) else {"reason": str(data)}


def pause(reason: str) -> None:
    """Stop all sending until the provider accepts our credentials again."""
    value = json.dumps({"reason": reason, "since": utcnow().isoformat()})
    row = db.session.get(AppState, PAUSE_KEY)
    if row is None:
        db.session.add(AppState(key=PAUSE_KEY, value=value))
    else:
        row.value = value
    db.session.commit()
    log.error("SENDING PAUSED: %s. Fix the credentials (for SendGrid, SENDGRID_API_KEY); "
              "sending resumes by itself once they work.", reason)


def resume() -> int:
    """Lift the pause; queued deliveries are enqueued by the next tick straight away."""
    row = db.session.get(AppState, PAUSE_KEY)
    if row is not None:
        db.session.delete(row)
    released = affected_rows(db.session.execute(
        update(Delivery).where(Delivery.status == DeliveryStatus.QUEUED).values(enqueued_at=None)
    ))
    db.session.commit()
    log.warning("sending resumed; %d queued deliveries will be enqueued", released)
    return released


def probe_and_resume() -> bool:
    """While paused, ask the provider whether our credentials work now; resume if so."""
    from .mail import MailError, get_backend

    backend = get_backend(current_app.config)
    check = getattr(backend, "check_credentials", None)
    try:
        ok = True if check is None else bool(check())
    except MailError as exc:
        log.warning("sending paused; the provider could not be asked yet: %s", exc)
        return False
    if ok:
        resume()
    return ok


# --- the outage backoff ------------------------------------------------------------------
#
# A 5xx, a 429 or a failure to connect says nothing about the messages: the provider is
# down, busy or limiting us. Every worker then stops claiming until ``until`` (the
# provider's Retry-After, however long, or an exponential wait shared by all), the
# deliveries stay queued without losing an attempt, and the tick enqueues them again
# once the time has passed. Nobody waits inside a job.


def _load(row: AppState | None) -> dict[str, Any] | None:
    if row is None:
        return None
    try:
        data = json.loads(row.value)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def backoff() -> dict[str, Any] | None:
    """The current backoff ({"until", "reason", "failures"}), expired or not, or None."""
    return _load(db.session.get(AppState, BACKOFF_KEY))


def backing_off(now: datetime, data: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The backoff (``data``, or the stored one) if it still holds at ``now``."""
    data = backoff() if data is None else data
    if data is None:
        return None
    try:
        until = datetime.fromisoformat(str(data.get("until")))
    except ValueError:
        return None
    return data if until > now else None


def back_off(reason: str, now: datetime, retry_after: float | None = None) -> datetime:
    """Stop every worker's sending until the provider can be tried again; returns when.

    The wait is ``retry_after`` when the provider said (honoured however long), else
    ``SEND_BACKOFF_SECONDS`` doubled for each failure in a row, up to
    ``SEND_BACKOFF_MAX_SECONDS``.
    """
    row = db.session.get(AppState, BACKOFF_KEY)
    failures = int((_load(row) or {}).get("failures", 0) or 0) + 1
    if retry_after is not None and retry_after > 0:
        wait = float(retry_after)
    else:
        base = float(current_app.config["SEND_BACKOFF_SECONDS"])
        wait = min(float(current_app.config["SEND_BACKOFF_MAX_SECONDS"]),
                   base * 2 ** min(failures - 1, 20))
    until = now + timedelta(seconds=wait)
    value = json.dumps({"until": until.isoformat(), "reason": reason[:500],
                        "failures": failures})
    if row is None:
        db.session.add(AppState(key=BACKOFF_KEY, value=value))
    else:
        row.value = value
    db.session.commit()
    log.warning("sending backs off for %.0f s (failure %d in a row): %s", wait, failures, reason)
    return until


def end_backoff() -> None:
    """The provider took a request: the next outage starts its backoff from the start."""
    db.session.execute(delete(AppState).where(AppState.key == BACKOFF_KEY))
    db.session.commit()


# KEYS[1]: the clock key. ARGV: count, rate (per second). Returns the slot's start (Redis
# clock) and the seconds to wait for it.
# Each caller reserves ``count`` slots on a shared clock that advances 1/rate per message,
# so all workers together never go faster than ``rate``, whatever their number.
RESERVE_LUA = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local start = tonumber(redis.call('GET', KEYS[1]) or '0')
if start < t then start = t end
local finish = start + tonumber(ARGV[1]) / tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.6f', finish), 'EX', 3600)
return {string.format('%.6f', start), string.format('%.6f', start - t)}
"""
RATE_KEY = "minicourse:send-rate:clock"
MAX_PER_REQUEST = 1000  # SendGrid's limit of personalizations per request


def reserve_slot(count: int) -> tuple[float, float]:
    """Reserve ``count`` sends at the configured rate: (slot start on Redis's clock, wait)."""
    rate = float(current_app.config.get("SEND_RATE", 0) or 0)
    if rate <= 0 or count <= 0:
        return 0.0, 0.0
    from .queue import redis_connection

    conn = redis_connection()
    script = current_app.extensions.get("minicourse_reserve")
    if script is None:
        script = conn.register_script(RESERVE_LUA)
        current_app.extensions["minicourse_reserve"] = script
    start, wait = script(keys=[RATE_KEY], args=[count, rate])
    return float(start), float(wait)


def reserve(count: int) -> float:
    """Reserve ``count`` sends at the configured rate; returns how long to wait first."""
    return reserve_slot(count)[1]


def chunk_size(total: int) -> int:
    """Recipients per request: all of them (up to 1,000), or about one second's worth when
    a send rate is set, so the rate holds smoothly instead of in large bursts."""
    rate = float(current_app.config.get("SEND_RATE", 0) or 0)
    step = MAX_PER_REQUEST if rate <= 0 else max(1, min(MAX_PER_REQUEST, int(rate)))
    return max(1, min(step, total)) if total else 1


def wait_for_rate(count: int) -> None:
    wait = reserve(count)
    if wait > 0:
        time.sleep(wait)
