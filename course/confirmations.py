"""Sending confirmation emails, and sending later the ones Redis could not take.

Signup writes a ``SignupRequest`` first and queues its job second, so a signup made while
Redis is down is saved, with ``queued_at`` left empty. :func:`send_owed`, run by the cron
(``workers/cron.py``), finds such requests in the database (not handled yet, or handled
and owed a confirmation) and queues them again; it also retries one whose send failed for
a reason that may pass (the provider busy, the network), and one whose job Redis lost.

A worker *claims* a request (``sent_at`` set by a conditional update) before sending, so
duplicate jobs, or a job and the sweep, never send the same confirmation twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import or_, update

from .content import current_course
from .extensions import affected_rows, db
from .mail import AuthError, MailError, TransientError, get_backend
from .models import SignupRequest, Status, Subscriber
from .render import confirmation_email
from .signup import RequestState, confirmation_token, enqueue_confirmations, handle
from .timeutil import utcnow

log = logging.getLogger(__name__)

# A queued job not done by then was lost (Redis flushed or restarted): queue it again.
REQUEUE_AFTER = timedelta(minutes=10)
MAX_ATTEMPTS = 3
SWEEP_LIMIT = 1000


def _owed(now: datetime) -> list[Any]:
    """Requests owed a confirmation that no live job will send, oldest first.

    A signup older than a confirmation link lives is left alone: after an outage that long
    the person has moved on, and a link out of the blue would look like spam.
    """
    max_age = timedelta(seconds=int(current_app.config["CONFIRM_MAX_AGE"]))
    pending = db.select(Subscriber.id).where(Subscriber.status == Status.PENDING)
    return [
        SignupRequest.state.in_([RequestState.NEW, RequestState.OWED]),
        SignupRequest.sent_at.is_(None),
        SignupRequest.attempts < MAX_ATTEMPTS,
        SignupRequest.created_at > now - max_age,
        or_(SignupRequest.queued_at.is_(None), SignupRequest.queued_at < now - REQUEUE_AFTER),
        or_(SignupRequest.state == RequestState.NEW, SignupRequest.subscriber_id.in_(pending)),
    ]


def send_owed() -> int:
    """Queue every confirmation still owed (see the module docstring). Returns how many."""
    now = utcnow()
    conditions = _owed(now)
    ids = list(db.session.scalars(db.select(SignupRequest.id).where(*conditions)
                                  .order_by(SignupRequest.id).limit(SWEEP_LIMIT)))
    if not ids:
        return 0
    # Mark them queued first, by a conditional update, so two sweeps queue each only once.
    taken = [row[0] for row in db.session.execute(
        update(SignupRequest).where(SignupRequest.id.in_(ids), *conditions)
        .values(queued_at=now).returning(SignupRequest.id)
        .execution_options(synchronize_session=False))]
    db.session.commit()
    if taken and enqueue_confirmations(taken):
        log.info("queued %d confirmation(s) owed since Redis was unavailable", len(taken))
        return len(taken)
    return 0


def send(request_id: int) -> bool:
    """Handle a signup not handled yet (``course.signup.handle``: find or create the
    subscriber), then send its confirmation if one is owed and the subscriber still waits.

    Returns True when the provider took it. A failure that may pass gives the claim back
    (the sweep tries again later, at most ``MAX_ATTEMPTS`` times); a refusal, or a request
    whose answer never came, keeps it: it is not resent blindly.
    """
    handle(request_id)
    now = utcnow()
    pending = db.select(Subscriber.id).where(Subscriber.status == Status.PENDING)
    claimed = affected_rows(db.session.execute(
        update(SignupRequest)
        .where(SignupRequest.id == request_id, SignupRequest.state == RequestState.OWED,
               SignupRequest.sent_at.is_(None), SignupRequest.subscriber_id.in_(pending))
        .values(sent_at=now, attempts=SignupRequest.attempts + 1)
        .execution_options(synchronize_session=False)))
    db.session.commit()
    if not claimed:
        return False
    req = db.session.get(SignupRequest, request_id)
    sub = db.session.get(Subscriber, req.subscriber_id) if req is not None else None
    if req is None or sub is None:
        return False
    template, recipient = confirmation_email(current_course(), token=confirmation_token(req),
                                             email=sub.email)
    try:
        [result] = get_backend(current_app.config).send_batch(template, [recipient])
    except (TransientError, AuthError) as exc:
        log.warning("confirmation %d not sent, will retry: %s", request_id, exc)
        _release(request_id)
        return False
    except MailError as exc:
        log.warning("confirmation %d failed: %s", request_id, exc)
        return False
    except Exception:
        _release(request_id)
        raise
    if not result.ok:
        log.warning("confirmation %d refused: %s", request_id, result.error)
    return result.ok


def _release(request_id: int) -> None:
    db.session.rollback()
    db.session.execute(update(SignupRequest).where(SignupRequest.id == request_id)
                       .values(sent_at=None).execution_options(synchronize_session=False))
    db.session.commit()
