"""Opens and clicks as the admin should read them: people and machines side by side.

Every figure the admin shows has one definition, written here once (``FIGURES`` in words
for the pages' legends, ``opened_by_person`` in SQL) and used by every page and the CSV
export, so the Subscribers list, a subscriber's page, the Dashboard and the Lessons page
can never disagree about what "opened" means.

Delivery-level figures come from the first times on each delivery (``opened_at`` any open,
``human_opened_at`` a person's first open or click, ``clicked_at`` a person's first click,
``completed_at`` marked done), so they count each subscriber once whatever the source
(our pixel and redirect, or SendGrid's events). Event-level figures count our own hits
only (``provider_event_id`` ``hit:…``), so a provider's copy of the same open is not
counted twice. Every query is one aggregate statement.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, not_, or_

from .extensions import db
from .models import Delivery, Event, EventKind, Subscriber
from .rehearsal import of_real_subscribers, real_subscribers
from .tracking_buffer import HIT_PREFIX

# --- the definitions ------------------------------------------------------------------------

# What each figure means, in the words every admin page's legend shows (templates/admin/
# _legend.html) and the CSV export's column notes repeat. Change a meaning here and in the
# SQL below together.
FIGURES: dict[str, tuple[str, str]] = {
    "sent": ("Sent", "the lesson left for their inbox (each subscriber once per lesson)."),
    "opened": ("Opened", "opened by a person: a person’s open, a person’s click, or the "
               "lesson marked done (doing it means they read it). Opens by mail privacy "
               "proxies, link scanners and the hidden canary link never count."),
    "machine_only": ("Opened, machines only", "sent and opened, but only ever by machines "
                     "and not marked done: read or not, nobody knows."),
    "clicked": ("Clicked", "a person followed a link in it (machines’ clicks are shown "
                "apart)."),
    "done": ("Done", "the subscriber pressed “Mark this lesson done”."),
    "hits": ("Hits", "every pixel load and every click, people and machines apart, "
             "however many times one person opens the same email."),
}


def _counted(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def opened_by_person() -> ColumnElement[bool]:
    """The one definition of "opened", in SQL: a person opened or clicked (``human_opened_at``
    holds a person's first open or click), or the lesson was marked done."""
    return or_(Delivery.human_opened_at.is_not(None), Delivery.completed_at.is_not(None))


def opened_by_person_at(human_opened_at: datetime | None,
                        completed_at: datetime | None) -> datetime | None:
    """The same definition for one delivery: when a person first opened, clicked or marked
    it done (None while none of those happened)."""
    times = [t for t in (human_opened_at, completed_at) if t is not None]
    return min(times) if times else None


def count_opened() -> Any:
    """Deliveries opened by a person, as an aggregate (for ``GROUP BY`` queries)."""
    return _counted(opened_by_person())


@dataclass(frozen=True)
class LessonFunnel:
    """One lesson's deliveries, each counted once."""

    position: int
    slug: str
    sent: int = 0
    opened: int = 0  # any open: people, proxies and scanners
    human_opened: int = 0  # opened by a person: see ``opened_by_person``
    machine_only: int = 0  # opened, but only ever by machines, and not marked done
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


def lesson_funnel() -> list[LessonFunnel]:
    """Per lesson (by position): sent, opened at all, opened by a person (or done),
    machine-only opens, clicked by a person, followed by a machine, done."""
    sent = and_(Delivery.sent_at.is_not(None), of_real_subscribers(Delivery.subscriber_id))
    rows = db.session.execute(
        db.select(
            Delivery.position,
            func.min(Delivery.lesson_slug),
            func.count(),
            func.count(Delivery.opened_at),
            count_opened(),
            _counted(and_(Delivery.opened_at.is_not(None), not_(opened_by_person()))),
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


def _ours() -> ColumnElement[bool]:
    """Our own pixel and redirect hits, not a provider's copy of them."""
    return Event.provider_event_id.like(f"{HIT_PREFIX}%")


def _hit_counts() -> tuple[Any, ...]:
    ours = _ours()
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


@dataclass(frozen=True)
class LinkClicks:
    """One link of one lesson: who followed it, people and machines apart (our own hits)."""

    position: int
    url: str  # "" is the hidden canary link, which only machines follow
    people: int = 0  # subscribers who clicked it, each once
    human_clicks: int = 0  # every click by a person
    machine_clicks: int = 0  # every click by a scanner, a link preview or the canary


def clicks_per_link() -> list[LinkClicks]:
    """Per lesson position and link URL, people who clicked and clicks by people and by
    machines, by position then by people's clicks (most first).

    One aggregate over the click events joined to their deliveries. PostgreSQL hashes
    that join, reading the delivery table once (about 0.4 s per million deliveries,
    measured by bench/admin.py), so the admin shows it from its Redis cache.
    """
    human = Event.machine.is_(False)
    url = func.coalesce(Event.url, "")
    rows = db.session.execute(
        db.select(
            Delivery.position, url,
            func.count(func.distinct(case((human, Event.subscriber_id)))),
            _counted(human),
            _counted(Event.machine.is_(True)),
        )
        .join(Delivery, Delivery.id == Event.delivery_id)
        .where(Event.kind == EventKind.CLICK, _ours(), of_real_subscribers(Event.subscriber_id))
        .group_by(Delivery.position, url)
    ).all()
    links = [LinkClicks(position, link, int(people), int(hc), int(mc))
             for position, link, people, hc, mc in rows]
    return sorted(links, key=lambda c: (c.position, -c.human_clicks, -c.machine_clicks, c.url))
