"""Opens and clicks as the admin should read them: people and machines side by side.

Delivery-level figures come from the first times on each delivery (``opened_at`` any open,
``human_opened_at`` a person's first open or click, ``clicked_at`` a person's first click,
``completed_at`` marked done), so they count each subscriber once whatever the source
(our pixel and redirect, or SendGrid's events). Event-level figures count our own hits
only (``provider_event_id`` ``hit:…``), so a provider's copy of the same open is not
counted twice. Every query is one aggregate statement.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import and_, case, func

from .extensions import db
from .models import Delivery, Event, EventKind, Subscriber
from .rehearsal import of_real_subscribers, real_subscribers
from .tracking_buffer import HIT_PREFIX


@dataclass(frozen=True)
class LessonFunnel:
    """One lesson's deliveries, each counted once."""

    position: int
    slug: str
    sent: int = 0
    opened: int = 0  # any open: people, proxies and scanners
    human_opened: int = 0  # opened (or clicked) by a person
    machine_only: int = 0  # opened, but only ever by machines: read or not, nobody knows
    clicked: int = 0  # a person clicked a link
    machine_clicked: int = 0  # a machine followed a link (scanners, the canary)
    done: int = 0  # marked done

    def rate(self, name: str) -> float | None:
        """A figure as a share of ``sent`` (None before anything was sent)."""
        value: int = getattr(self, name)
        return value / self.sent if self.sent else None


@dataclass(frozen=True)
class HitCounts:
    """Raw hits on a delivery (or a lesson): every pixel load and click, split by who."""

    human_opens: int = 0
    machine_opens: int = 0
    human_clicks: int = 0
    machine_clicks: int = 0


def _counted(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def lesson_funnel() -> list[LessonFunnel]:
    """Per lesson (by position): sent, opened, opened by a person, machine-only opens,
    clicked by a person, followed by a machine, done."""
    sent = and_(Delivery.sent_at.is_not(None), of_real_subscribers(Delivery.subscriber_id))
    rows = db.session.execute(
        db.select(
            Delivery.position,
            func.min(Delivery.lesson_slug),
            func.count(),
            func.count(Delivery.opened_at),
            func.count(Delivery.human_opened_at),
            _counted(and_(Delivery.opened_at.is_not(None), Delivery.human_opened_at.is_(None))),
            func.count(Delivery.clicked_at),
            func.count(Delivery.completed_at),
        )
        .where(sent)
        .group_by(Delivery.position)
        .order_by(Delivery.position)
    ).all()
    machine_clicked = dict(db.session.execute(
        db.select(Delivery.position, func.count(func.distinct(Event.delivery_id)))
        .join(Event, Event.delivery_id == Delivery.id)
        .where(sent, Event.kind == EventKind.CLICK, Event.machine.is_(True))
        .group_by(Delivery.position)
    ).all())
    return [
        LessonFunnel(position, slug, n, opened, human, machine_only, clicked,
                     machine_clicked.get(position, 0), done)
        for position, slug, n, opened, human, machine_only, clicked, done in rows
    ]


def funnel_totals(funnel: list[LessonFunnel]) -> LessonFunnel:
    """All lessons added up (each delivery once), for a summary row."""
    sums = {f.name: sum(getattr(row, f.name) for row in funnel)
            for f in fields(LessonFunnel) if f.name not in ("position", "slug")}
    return LessonFunnel(0, "", **sums)


def _hit_counts() -> tuple[Any, ...]:
    ours = Event.provider_event_id.like(f"{HIT_PREFIX}%")
    is_open, is_click = Event.kind == EventKind.OPEN, Event.kind == EventKind.CLICK
    human, machine = Event.machine.is_(False), Event.machine.is_(True)
    return (
        _counted(and_(ours, is_open, human)), _counted(and_(ours, is_open, machine)),
        _counted(and_(ours, is_click, human)), _counted(and_(ours, is_click, machine)),
    )


def hits_per_lesson() -> dict[int, HitCounts]:
    """Raw pixel loads and clicks per lesson position, people and machines apart."""
    rows = db.session.execute(
        db.select(Delivery.position, *_hit_counts())
        .join(Event, Event.delivery_id == Delivery.id)
        .where(Event.kind.in_([EventKind.OPEN, EventKind.CLICK]),
               of_real_subscribers(Delivery.subscriber_id))
        .group_by(Delivery.position)
    ).all()
    return {position: HitCounts(*counts) for position, *counts in rows}


def hits_for_subscriber(subscriber_id: int) -> dict[int, HitCounts]:
    """Raw hits per delivery of one subscriber (for the subscriber page), by delivery id."""
    rows = db.session.execute(
        db.select(Event.delivery_id, *_hit_counts())
        .where(Event.subscriber_id == subscriber_id,
               Event.kind.in_([EventKind.OPEN, EventKind.CLICK]))
        .group_by(Event.delivery_id)
    ).all()
    return {delivery_id: HitCounts(*counts) for delivery_id, *counts in rows
            if delivery_id is not None}


def completions() -> dict[str, int]:
    """Subscribers who were sent at least one lesson, and those who completed the course."""
    started = db.session.scalar(
        db.select(func.count(func.distinct(Delivery.subscriber_id)))
        .where(Delivery.sent_at.is_not(None), of_real_subscribers(Delivery.subscriber_id))
    )
    completed = db.session.scalar(
        db.select(func.count()).select_from(Subscriber)
        .where(Subscriber.completed_at.is_not(None), real_subscribers())
    )
    return {"started": started or 0, "completed": completed or 0}
