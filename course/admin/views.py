"""The subscribers table and one subscriber's page: who is where in the course."""

from __future__ import annotations

from dataclasses import dataclass

from flask import abort, current_app, render_template, request

from .. import tracking_stats
from ..content import current_course
from ..extensions import db
from ..lessons import Lesson
from ..models import Delivery, Status, Subscriber
from ..pipeline import stuck_sending
from . import bp
from .queries import (
    MAX_ID,
    attention_counts,
    progress_for,
    resendable,
    status_counts,
    subscriber_query,
)

SEARCH_MAX = 320
STUCK_SHOWN = 20


@bp.route("/")
@bp.route("/subscribers")
def subscribers() -> str:
    search = request.args.get("q", "").strip()[:SEARCH_MAX]
    status = request.args.get("status", "")
    if status not in Status.ALL:
        status = ""
    page = max(1, request.args.get("page", 1, type=int) or 1)
    pagination = db.paginate(
        subscriber_query(search, status),
        page=page,
        per_page=current_app.config["ADMIN_PAGE_SIZE"],
        max_per_page=None,
        error_out=False,
    )
    rows = list(pagination.items)
    stuck = stuck_sending()
    return render_template(
        "admin/subscribers.html",
        pagination=pagination,
        rows=rows,
        progress=progress_for([s.id for s in rows]),
        search=search,
        status=status,
        statuses=Status.ALL,
        counts=status_counts(),
        problems=attention_counts(),
        stuck=stuck[:STUCK_SHOWN],
        stuck_total=len(stuck),
        course=current_course(),
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
        no_hits=tracking_stats.HitCounts(),
    )
