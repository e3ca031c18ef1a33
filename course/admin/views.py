"""The subscribers table and one subscriber's page: who is where in the course."""

from __future__ import annotations

from dataclasses import dataclass

from flask import abort, current_app, render_template, request

from .. import audit, subscriber_actions, tracking_stats
from ..content import current_course
from ..extensions import db
from ..lessons import Lesson
from ..models import Delivery, Status, Subscriber
from ..pipeline import stuck_sending
from . import bp
from .queries import (
    COUNT_CAP,
    DEFAULT_SORT,
    MAX_ID,
    MAX_OFFSET,
    SORTS,
    Progress,
    SubscriberFilter,
    attention_counts,
    count_matching,
    progress_for,
    recent_status_counts,
    resendable,
    subscriber_page,
)

SEARCH_MAX = 320
# A "contains" search is looked up by three-letter pieces (trigrams) on PostgreSQL; one or
# two letters would read every row of a large list, and match most of them anyway.
SEARCH_MIN = 3
STUCK_SHOWN = 20
MAX_PAGE_LABEL = 10_000_000


def _positive_int(name: str, limit: int) -> int | None:
    """A query argument that must be a whole number from 1 to ``limit``; anything else is
    treated as absent, so a mangled link shows the list rather than an error."""
    raw = request.args.get(name, "").strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        return None
    value = int(raw)
    return value if 1 <= value <= limit else None


def list_filters(course_length: int) -> tuple[SubscriberFilter, str]:
    """The list's filters and sort order from the query string; unknown values are
    ignored (the list falls back to everyone, newest first)."""
    status = request.args.get("status", "")
    sort = request.args.get("sort", DEFAULT_SORT)
    filters = SubscriberFilter(
        # NUL cannot be sent to PostgreSQL in a string, and is never part of an address.
        search=request.args.get("q", "").replace("\x00", "").strip()[:SEARCH_MAX],
        status=status if status in Status.ALL else "",
        lesson=_positive_int("lesson", course_length + 1),
    )
    return filters, sort if sort in SORTS else DEFAULT_SORT


@bp.route("/subscribers")
def subscribers() -> str:
    """Everyone, searched, filtered and sorted, 50 at a time, at any size of list: pages go
    on from a row rather than by OFFSET and totals past COUNT_CAP are not counted."""
    course = current_course()
    filters, sort = list_filters(course.length)
    per_page = current_app.config["ADMIN_PAGE_SIZE"]
    after = _positive_int("after", MAX_ID)
    before = None if after else _positive_int("before", MAX_ID)
    number = _positive_int("page", MAX_PAGE_LABEL) or 1
    offset = 0
    too_deep = False
    too_short = 0 < len(filters.search) < SEARCH_MIN
    if after is None and before is None and number > 1:
        # A typed-in page number: fine for the first few thousand rows; past them "Next"
        # (which continues from a row) is the way, as OFFSET would read every row skipped.
        offset = (number - 1) * per_page
        too_deep = offset > MAX_OFFSET
    page = None
    total = count_matching(filters, COUNT_CAP) if not too_short else 0
    if not (too_deep or too_short):
        page = subscriber_page(filters, sort, per_page, after=after, before=before,
                               offset=offset, few=filters.active and total <= COUNT_CAP)
        if page.rows and page.prev_before is None:
            number = 1  # continued back to the very start
    rows = page.rows if page else []
    stuck = stuck_sending()
    counts, counted_at = recent_status_counts()
    return render_template(
        "admin/subscribers.html",
        page=page,
        page_number=number,
        pages=-(-total // per_page) if total <= COUNT_CAP else None,
        too_deep=too_deep,
        too_short=too_short,
        search_min=SEARCH_MIN,
        rows=rows,
        total=total,
        count_cap=COUNT_CAP,
        progress=progress_for([s.id for s in rows]),
        filters=filters,
        search=filters.search,
        status=filters.status,
        lesson=filters.lesson,
        sort=sort,
        sorts={name: label for name, (label, _, _) in SORTS.items()},
        default_sort=DEFAULT_SORT,
        statuses=Status.ALL,
        counts=counts,
        counted_at=counted_at,
        problems=attention_counts(),
        stuck=stuck[:STUCK_SHOWN],
        stuck_total=len(stuck),
        course=course,
        max_offset_page=MAX_OFFSET // per_page + 1,
    )


@dataclass(frozen=True)
class LessonRow:
    """One lesson of the course and this subscriber's delivery of it, if any."""

    lesson: Lesson
    delivery: Delivery | None


@bp.route("/subscribers/<int:subscriber_id>")
def subscriber(subscriber_id: int) -> str:
    if subscriber_id > MAX_ID:
        abort(404)
    sub = db.get_or_404(Subscriber, subscriber_id)
    course = current_course()
    deliveries = db.session.scalars(
        db.select(Delivery).where(Delivery.subscriber_id == sub.id).order_by(Delivery.position)
    ).all()
    by_slug = {d.lesson_slug: d for d in deliveries}
    rows = [LessonRow(lesson, by_slug.pop(lesson.slug, None)) for lesson in course.lessons]
    # Deliveries of lessons since removed from the course are still history worth seeing.
    orphans = sorted(by_slug.values(), key=lambda d: (d.position, d.id))
    return render_template(
        "admin/subscriber.html",
        sub=sub,
        course=course,
        rows=rows,
        orphans=orphans,
        next_lesson=course.lesson_at(sub.next_position),
        resendable=resendable(d.id for d in deliveries),
        hits=tracking_stats.hits_for_subscriber(sub.id),
        # The same counts as their row in the list, by the same definitions.
        progress=progress_for([sub.id]).get(sub.id, Progress()),
        opened_by_person_at=tracking_stats.opened_by_person_at,
        no_hits=tracking_stats.HitCounts(),
        audit=audit.entries_for(sub.id),
        erased=subscriber_actions.is_erased(sub),
    )
