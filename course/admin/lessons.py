"""Per-lesson figures in the admin: what was sent, and who really read and did it.

Opens and clicks are shown twice, side by side: by people (a person's open or click, see
``course.machines`` for how machines are told apart) and by machines (privacy proxies that
fetch every pixel, link scanners, the hidden canary link). Only the people's figures say
whether a lesson works.
"""

from __future__ import annotations

from flask import render_template

from .. import tracking_stats
from ..content import current_course
from . import bp


@bp.route("/lessons")
def lessons() -> str:
    course = current_course()
    funnel = {row.position: row for row in tracking_stats.lesson_funnel()}
    empty = tracking_stats.LessonFunnel
    rows = [(lesson, funnel.pop(lesson.position, empty(lesson.position, lesson.slug)))
            for lesson in course.lessons]
    return render_template(
        "admin/lessons.html",
        course=course,
        rows=rows,
        # Positions past the end of today's course (lessons since removed) still count.
        totals=tracking_stats.funnel_totals([row for _, row in rows] + list(funnel.values())),
        hits=tracking_stats.hits_per_lesson(),
        no_hits=tracking_stats.HitCounts(),
        completions=tracking_stats.completions(),
    )
