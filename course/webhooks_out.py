"""Outgoing webhooks: integrators hear what happens to subscribers, signed and retried.

Each URL in ``WEBHOOK_URLS`` receives a JSON POST per event::

    {"id": "evt_…", "type": "lesson.sent", "created": "2025-01-31T09:00:00Z", "data": {…}}

Types: ``subscriber.confirmed``, ``subscriber.unsubscribed``, ``subscriber.bounced``,
``subscriber.complained``, ``lesson.sent``, ``lesson.opened``, ``lesson.completed`` and
``course.completed``. ``data`` holds ``subscriber`` ({id, email}) and, for lesson events,
``delivery_id`` and ``lesson`` ({slug, position}), plus the event's own time.

Delivery is at least once: a receiver dedupes on ``id`` (one per event and URL). Each POST
is signed: ``Minicourse-Signature: t=<unix time>,v1=<hex>``, where the hex is the
HMAC-SHA256, keyed with ``WEBHOOK_SECRET``, of ``<t>.`` followed by the raw body; a
receiver recomputes it, compares in constant time and refuses an old ``t`` (see
:func:`verify`). Any answer but 2xx, a redirect, a timeout or a refused connection is a
failure: the RQ job is retried with growing waits (``WEBHOOK_RETRY_BASE`` × 4ⁿ) up to
``WEBHOOK_MAX_ATTEMPTS``, then the row is ``failed`` with the last error, for the admin.

Transactions: :func:`emit` adds its rows to the caller's transaction and the jobs are
enqueued only once that transaction commits (a session ``after_commit`` hook), so no
integrator ever hears of something that was rolled back. If Redis is down then, the rows
stay ``pending`` and :func:`requeue_lost` enqueues them again later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from http.client import HTTPException
from typing import Any

from flask import current_app
from rq import Queue, Retry
from rq.job import Job, JobStatus
from sqlalchemy import event, func, insert, update
from sqlalchemy.orm import Session

from . import queue
from .extensions import db
from .models import OutgoingWebhook
from .timeutil import utcnow

log = logging.getLogger(__name__)

TYPES = (
    "subscriber.confirmed", "subscriber.unsubscribed", "subscriber.bounced",
    "subscriber.complained", "lesson.sent", "lesson.opened", "lesson.completed",
    "course.completed",
)
PENDING, SENT, FAILED = "pending", "sent", "failed"
SIGNATURE_HEADER = "Minicourse-Signature"
JOB = "workers.tasks.deliver_webhook"
_PENDING_KEY = "minicourse_outgoing_webhooks"
_hooks_installed = False


class DeliveryFailed(RuntimeError):
    """The receiver did not take the event; RQ retries the job."""


def iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def subscriber_data(subscriber_id: int, email: str, **extra: Any) -> dict[str, Any]:
    """``data`` for a subscriber event; ``extra`` adds its time and details."""
    return {"subscriber": {"id": subscriber_id, "email": email}, **extra}


def lesson_data(delivery_id: int, subscriber_id: int, email: str, slug: str, position: int,
                **extra: Any) -> dict[str, Any]:
    """``data`` for a lesson event (sent, opened, completed)."""
    return {"subscriber": {"id": subscriber_id, "email": email}, "delivery_id": delivery_id,
            "lesson": {"slug": slug, "position": position}, **extra}


def enabled() -> bool:
    """Whether any URL listens: callers on hot paths skip building payloads when not."""
    return bool(current_app.config.get("WEBHOOK_URLS"))


def emit(kind: str, data: dict[str, Any]) -> None:
    """Queue one event for every configured URL, in the caller's transaction."""
    if current_app.config.get("WEBHOOK_URLS"):
        emit_many(kind, [data])


def emit_many(kind: str, items: Sequence[dict[str, Any]]) -> None:
    """Queue many events of one kind in one INSERT (the send path emits a batch at once).

    With no ``WEBHOOK_URLS`` this returns at once: the send path calls it for every batch.
    """
    urls = current_app.config.get("WEBHOOK_URLS")
    if not urls or not items:
        return
    if kind not in TYPES:
        raise ValueError(f"unknown webhook event type {kind!r}")
    now = utcnow()
    created = iso(now)
    rows = []
    for data in items:
        for url in urls:
            event_id = f"evt_{uuid.uuid4().hex}"
            body = {"id": event_id, "type": kind, "created": created, "data": data}
            rows.append({"event_id": event_id, "kind": kind, "url": url,
                         "payload": json.dumps(body, separators=(",", ":"), default=str),
                         "status": PENDING, "attempts": 0, "last_error": "",
                         "created_at": now})
    session = db.session()
    ids: list[int] = []
    for start in range(0, len(rows), 500):
        ids += session.execute(
            insert(OutgoingWebhook).returning(OutgoingWebhook.id), rows[start : start + 500]
        ).scalars().all()
    _install_hooks()
    session.info.setdefault(_PENDING_KEY, []).extend(ids)


def _install_hooks() -> None:
    """Once per process: enqueue after a commit, forget after a rollback."""
    global _hooks_installed
    if not _hooks_installed:
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_rollback", _after_rollback)
        _hooks_installed = True


def _after_commit(session: Session) -> None:
    ids = session.info.pop(_PENDING_KEY, None)
    if ids:
        try:
            enqueue(ids)
        except Exception:  # the rows are committed: requeue_lost() sends them later
            log.warning("could not enqueue %d outgoing webhooks; they stay pending", len(ids),
                        exc_info=True)


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)


def _job_id(webhook_id: int) -> str:
    return f"minicourse-webhook-{webhook_id}"


def retry_policy(config: Any) -> Retry | None:
    """RQ's retries match the row's attempts: the last failure marks the row failed."""
    retries = max(int(config["WEBHOOK_MAX_ATTEMPTS"]) - 1, 0)
    if not retries:
        return None
    base = float(config["WEBHOOK_RETRY_BASE"])
    return Retry(max=retries, interval=[int(base * 4**n) for n in range(retries)])


def enqueue(ids: Iterable[int]) -> None:
    """One job per row, in one Redis round trip."""
    q = queue.queue(queue.MAIL_QUEUE)
    retry = retry_policy(current_app.config)
    q.enqueue_many([
        Queue.prepare_data(JOB, args=(i,), job_id=_job_id(i), retry=retry, timeout=120,
                           result_ttl=600, failure_ttl=7 * 24 * 3600)
        for i in ids
    ])


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Minicourse-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance: int = 300,
           now: float | None = None) -> bool:
    """What a receiver does: a fresh timestamp and a matching HMAC (reference code)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer we do not follow: the event was not taken."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
    """POST once; None when a 2xx came back, else what went wrong in a line."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(4096)
        return None
    except urllib.error.HTTPError as exc:
        snippet = exc.read(300).decode("utf-8", "replace").strip()
        return f"HTTP {exc.code}" + (f": {' '.join(snippet.split())}" if snippet else "")
    except urllib.error.URLError as exc:
        return f"could not connect: {exc.reason}"
    except (TimeoutError, OSError, HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def deliver(webhook_id: int) -> str:
    """The job: POST one row's event. Raises DeliveryFailed so RQ retries it.

    The attempt is counted and committed before the POST, so no transaction stays open
    while a slow receiver answers and a killed job still counts as an attempt.
    """
    claimed = db.session.execute(
        update(OutgoingWebhook)
        .where(OutgoingWebhook.id == webhook_id, OutgoingWebhook.status == PENDING)
        .values(attempts=OutgoingWebhook.attempts + 1)
        .returning(OutgoingWebhook.url, OutgoingWebhook.payload, OutgoingWebhook.attempts,
                   OutgoingWebhook.event_id, OutgoingWebhook.kind)
    ).first()
    db.session.commit()
    if claimed is None:
        return "skipped"  # sent or given up already, or rolled back
    url, payload, attempts, event_id, kind = claimed
    config = current_app.config
    body = payload.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Minicourse-Webhooks/1",
        SIGNATURE_HEADER: sign(config["WEBHOOK_SECRET"], int(time.time()), body),
        "Minicourse-Event-Id": event_id,
        "Minicourse-Event-Type": kind,
    }
    error = post(url, body, headers, float(config["WEBHOOK_TIMEOUT"]))
    done = error is None or attempts >= int(config["WEBHOOK_MAX_ATTEMPTS"])
    values: dict[str, Any] = {"last_error": (error or "")[:2000]}
    if error is None:
        values.update(status=SENT, delivered_at=utcnow())
    elif done:
        values.update(status=FAILED)
        log.warning("webhook %s to %s failed for good after %d attempts: %s",
                    event_id, url, attempts, error)
    db.session.execute(update(OutgoingWebhook).where(OutgoingWebhook.id == webhook_id)
                       .values(**values))
    db.session.commit()
    if not done:
        raise DeliveryFailed(f"attempt {attempts} to {url}: {error}")
    return SENT if error is None else FAILED


def requeue_lost(older_than: timedelta = timedelta(minutes=10), page: int = 1000) -> int:
    """Enqueue pending rows whose job Redis lost (flushed, or down when they were made).

    Walks every pending row older than ``older_than``, ``page`` ids at a time, so lost
    rows behind a thousand healthy ones (a receiver slow to answer) are found as well.
    """
    cutoff = utcnow() - older_than
    conn = queue.redis_connection()
    alive = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
    lost_total, after = 0, 0
    while True:
        ids = db.session.execute(
            db.select(OutgoingWebhook.id)
            .where(OutgoingWebhook.status == PENDING, OutgoingWebhook.created_at < cutoff,
                   OutgoingWebhook.id > after)
            .order_by(OutgoingWebhook.id).limit(page)
        ).scalars().all()
        db.session.commit()
        if not ids:
            break
        after = ids[-1]
        jobs = Job.fetch_many([_job_id(i) for i in ids], connection=conn)
        lost = [i for i, job in zip(ids, jobs, strict=True)
                if job is None or job.get_status(refresh=False) not in alive]
        if lost:
            enqueue(lost)
            lost_total += len(lost)
    if lost_total:
        log.info("re-enqueued %d outgoing webhooks Redis had lost", lost_total)
    return lost_total


def failed_webhooks(limit: int = 50) -> list[OutgoingWebhook]:
    """For the admin: the latest deliveries that gave up, newest first."""
    return list(db.session.scalars(
        db.select(OutgoingWebhook).where(OutgoingWebhook.status == FAILED)
        .order_by(OutgoingWebhook.created_at.desc(), OutgoingWebhook.id.desc()).limit(limit)
    ))


def webhook_counts() -> dict[str, int]:
    """For the admin: how many rows are pending, sent and failed."""
    rows = db.session.execute(
        db.select(OutgoingWebhook.status, func.count()).group_by(OutgoingWebhook.status)
    ).all()
    return {PENDING: 0, SENT: 0, FAILED: 0, **{status: n for status, n in rows}}


def retry_failed(ids: Sequence[int]) -> int:
    """An admin's "try again": failed rows start over and are enqueued after the commit."""
    retried = db.session.execute(
        update(OutgoingWebhook)
        .where(OutgoingWebhook.id.in_(list(ids)), OutgoingWebhook.status == FAILED)
        .values(status=PENDING, attempts=0)
        .returning(OutgoingWebhook.id)
    ).scalars().all()
    if retried:
        _install_hooks()
        db.session().info.setdefault(_PENDING_KEY, []).extend(retried)
    db.session.commit()
    return len(retried)
