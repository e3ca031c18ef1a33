"""Which lesson loses people: per lesson, who left after it, who stalled at it, who has not
reached it yet and who dropped off before it.

"Opened" here is the admin's one definition (``tracking_stats.opened_by_person``: a
person's open or click, or the lesson marked done). The figures count subscribers, each
in one place per figure:

- *left after lesson N*: unsubscribed, bounced or complained, and N is the furthest lesson
  they had been sent (0: they left before any lesson reached them);
- *stalled at lesson N*: still subscribed (active, paused or finished); N is the lesson
  after the last one they opened or marked done (lesson 1 if none); a lesson from N on
  reached them at least ``days`` days ago; and they have opened nothing and marked nothing
  done for ``days`` days (a delivery keeps a person's first open only, so re-reading a
  lesson opened before is not seen);
- *not reached lesson N yet*: active or paused, and N is not yet sent to them (their next
  lesson is N or earlier). Pending signups are not in the course yet and are not counted;
- *dropped off before lesson N*: left (as above) with a furthest lesson before N.

Two aggregate statements: one over every sent delivery, grouped per subscriber and then
per (status, lesson), and one over ``ix_subscriber_status_next_position_id``. The first
reads the whole delivery table (seconds at five million rows), so the admin keeps its
result in Redis with the dashboard's figures (``course/admin/dashboard.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_

from .extensions import db
from .models import Delivery, Status, Subscriber
from .rehearsal import real_subscribers
from .tracking_stats import opened_by_person

LEFT = (Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED)
STILL_SUBSCRIBED = (Status.ACTIVE, Status.PAUSED, Status.FINISHED)
IN_COURSE = (Status.ACTIVE, Status.PAUSED)  # still waiting for lessons
DEFAULT_STALLED_DAYS = 7

# The meaning of each figure, in the words the Lessons page's legend shows ("{days}" is
# the number of days a subscriber must be silent to count as stalled).
FIGURES: dict[str, tuple[str, str]] = {
    "not_reached": ("Not reached yet", "active or paused, and this lesson has not been sent "
                    "to them yet. Pending signups (not confirmed) are not counted."),
    "dropped_before": ("Dropped off before it", "unsubscribed, bounced or complained before "
                       "this lesson reached them: kept apart from those still on their way."),
    "stalled": ("Stalled at it", "still subscribed; this is the lesson after the last one they "
                "opened or marked done (lesson 1 if none); it, or a later one, reached them "
                "more than {days} days ago; and they have opened nothing and marked nothing "
                "done for {days} days."),
    "unsubscribed": ("Unsubscribed after it", "unsubscribed when this was the furthest lesson "
                     "they had been sent."),
    "left_otherwise": ("Bounced or complained after it", "their address bounced, or they "
                       "reported an email as spam, when this was the furthest lesson they "
                       "had been sent."),
}


@dataclass(frozen=True)
class LessonLoss:
    """One lesson's losses, each a count of subscribers (see the module's docstring)."""

    position: int
    unsubscribed: int = 0  # unsubscribed after it
    bounced: int = 0  # bounced after it
    complained: int = 0  # marked it (or a later email) as spam after it
    stalled: int = 0
    not_reached: int = 0
    dropped_before: int = 0

    @property
    def left_otherwise(self) -> int:
        """Bounced or complained after it: gone, though not by choosing to unsubscribe."""
        return self.bounced + self.complained


def lesson_loss(now: datetime, days: int = DEFAULT_STALLED_DAYS,
                length: int = 1) -> dict[str, Any]:
    """The figures as plain data (cached as JSON): ``days``, ``left_before_any`` (per
    status, subscribers who left before their first lesson) and ``lessons``: one dict per
    position, from 1 to the course's ``length`` or the furthest position anyone was sent
    or is due, whichever is greater (see ``LessonLoss``)."""
    cutoff = now - timedelta(days=days)
    per = (
        db.select(
            Delivery.subscriber_id.label("sid"),
            func.max(Delivery.position).label("furthest"),
            func.coalesce(func.max(case((opened_by_person(), Delivery.position))), 0)
            .label("engaged"),
            func.max(Delivery.human_opened_at).label("last_open"),
            func.max(Delivery.completed_at).label("last_done"),
            func.max(case((Delivery.sent_at < cutoff, Delivery.position))).label("old"),
        )
        .where(Delivery.sent_at.is_not(None))
        .group_by(Delivery.subscriber_id)
        .subquery("per")
    )
    left = Subscriber.status.in_(LEFT)
    left_after = case((left, func.coalesce(per.c.furthest, 0)))
    stalled_at = case((and_(
        Subscriber.status.in_(STILL_SUBSCRIBED),
        per.c.old > per.c.engaged,
        or_(per.c.last_open.is_(None), per.c.last_open < cutoff),
        or_(per.c.last_done.is_(None), per.c.last_done < cutoff),
    ), per.c.engaged + 1))
    rows = db.session.execute(
        db.select(Subscriber.status, left_after, stalled_at, func.count())
        .select_from(Subscriber)
        .outerjoin(per, per.c.sid == Subscriber.id)
        .where(Subscriber.status.in_(LEFT + STILL_SUBSCRIBED), real_subscribers())
        .group_by(Subscriber.status, left_after, stalled_at)
    ).all()
    waiting = db.session.execute(
        db.select(Subscriber.next_position, func.count())
        .where(Subscriber.status.in_(IN_COURSE), real_subscribers())
        .group_by(Subscriber.next_position)
    ).all()
    return summarise(days, rows, waiting, length)


def summarise(days: int, rows: Sequence[Any], waiting: Sequence[Any],
              length: int = 1) -> dict[str, Any]:
    """Per-lesson figures from the grouped counts: ``rows`` are (status, furthest lesson
    sent if they left, lesson stalled at, subscribers); ``waiting`` are (next lesson,
    subscribers active or paused)."""
    left: dict[str, Counter[int]] = {status: Counter() for status in LEFT}
    stalled: Counter[int] = Counter()
    for status, furthest, stalled_at, n in rows:
        if status in left and furthest is not None:
            left[status][int(furthest)] += int(n)
        if stalled_at is not None:
            stalled[int(stalled_at)] += int(n)
    next_lesson = Counter({int(position): int(n) for position, n in waiting})
    last = max([length, *stalled, *next_lesson, *(p for c in left.values() for p in c)])
    lessons = []
    for position in range(1, last + 1):
        lessons.append({
            "position": position,
            "unsubscribed": left[Status.UNSUBSCRIBED][position],
            "bounced": left[Status.BOUNCED][position],
            "complained": left[Status.COMPLAINED][position],
            "stalled": stalled[position],
            "not_reached": sum(n for p, n in next_lesson.items() if p <= position),
            "dropped_before": sum(n for c in left.values() for p, n in c.items()
                                  if p < position),
        })
    return {"days": days,
            "left_before_any": {status: left[status][0] for status in LEFT},
            "lessons": lessons}
