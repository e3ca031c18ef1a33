"""Test subscribers (the address ``flask course rehearse`` plays the course to) stay out
of every figure.

A rehearsal goes through the real tick and sender, so its subscriber, deliveries and any
opens or clicks on its emails are real rows. Subscribers marked ``is_test`` are left out
by each figure query with one of these two conditions, so the dashboard, the lessons
page and the sending rates count only people.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, exists

from .models import Subscriber


def real_subscribers() -> ColumnElement[bool]:
    """For a query on ``Subscriber``: only subscribers who count (not test addresses)."""
    return Subscriber.is_test.is_(False)


def of_real_subscribers(subscriber_id: Any) -> ColumnElement[bool]:
    """For a query on deliveries or events: rows whose ``subscriber_id`` column is not a
    test subscriber's (rows of no subscriber count). A NOT EXISTS, which PostgreSQL runs as
    an anti-join against the few test rows (found through ``ix_subscriber_is_test``)."""
    return ~exists().where(Subscriber.id == subscriber_id, Subscriber.is_test.is_(True))
