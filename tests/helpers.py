"""Small builders shared by tests (rows, not mocks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from course.extensions import db
from course.models import Status, Subscriber
from course.timeutil import utcnow


def add_subscriber(email: str, *, status: str = Status.ACTIVE, timezone: str = "UTC",
                   name: str = "", next_send_at: datetime | None = None,
                   next_position: int = 1, **extra: Any) -> Subscriber:
    sub = Subscriber(email=email, name=name, timezone=timezone, status=status,
                     next_position=next_position,
                     next_send_at=next_send_at if next_send_at is not None else (
                         utcnow() if status == Status.ACTIVE else None),
                     consent_at=utcnow(), consent_version="test", **extra)
    db.session.add(sub)
    db.session.commit()
    return sub
