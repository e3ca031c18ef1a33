"""Per-lesson figures in the admin: what was sent, who really read and did it, which lesson
loses people, and which links they follow.

Opens and clicks are shown twice, side by side: by people (a person's open or click, see
``course.machines`` for how machines are told apart) and by machines (privacy proxies that
fetch every pixel, link scanners, the hidden canary link). Only the people's figures say
whether a lesson works. Each figure's meaning is written once, in ``tracking_stats.FIGURES``
and ``course/dropoff_stats.py``, and shown in the page's legend.

Every figure here reads all deliveries, so it comes from the dashboard's Redis cache
(refreshed in the background, see ``course/admin/dashboard.py``): the page costs a few
Redis reads at any size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import flash, redirect, render_template, url_for
from werkzeug.wrappers import Response

from .. import dropoff_stats, health, tracking_stats
from ..content import current_course
from ..lessons import Lesson
from ..render import render_lesson
from ..timeutil import utcnow
from . import bp
from .dashboard import load_figures, refresh_figures


def lesson_links(lesson: Lesson) -> tuple[str, ...]:
    """The links in today's version of a lesson (rendered once per version and process)."""
    return render_lesson(current_course(), lesson).links


def links_by_lesson(clicked: list[dict[str, Any]],
                    lessons: Sequence[Lesson]) -> dict[int, list[tracking_stats.LinkClicks]]:
    """Per position, every clicked link, then the lesson's links nobody clicked yet."""
    out: dict[int, list[tracking_stats.LinkClicks]] = {}
    for row in clicked:
        out.setdefault(row["position"], []).append(tracking_stats.LinkClicks(**row))
    for lesson in lessons:
        rows = out.setdefault(lesson.position, [])
        seen = {row.url for row in rows}
        rows.extend(tracking_stats.LinkClicks(lesson.position, url)
                    for url in lesson_links(lesson) if url not in seen)
    return out


@bp.route("/lessons")
def lessons() -> str:
    course = current_course()
    now = utcnow()
    figures = load_figures(now, "lessons")
    values = figures.values
    funnel = {row["position"]: tracking_stats.LessonFunnel(**row) for row in values["funnel"]}
    empty = tracking_stats.LessonFunnel
    rows = [(lesson, funnel.pop(lesson.position, empty(lesson.position, lesson.slug)))
            for lesson in course.lessons]
    # Positions past the end of today's course (lessons since removed) still count.
    removed = sorted(funnel.values(), key=lambda row: row.position)
    loss_values = values["loss"]
    loss = {row["position"]: dropoff_stats.LessonLoss(**row) for row in loss_values["lessons"]}
    return render_template(
        "admin/lessons.html",
        course=course,
        rows=rows,
        removed=removed,
        totals=tracking_stats.funnel_totals([row for _, row in rows] + removed),
        hits={position: tracking_stats.HitCounts(**counts)
              for position, counts in values["hits"]},
        no_hits=tracking_stats.HitCounts(),
        completions=values["completions"],
        loss=loss,
        no_loss=dropoff_stats.LessonLoss,
        stalled_days=loss_values["days"],
        left_before_any=loss_values["left_before_any"],
        links=links_by_lesson(values["links"], course.lessons),
        figures=figures,
        figures_age=health.age_text(now - figures.as_of),
    )


@bp.post("/lessons/refresh")
def refresh_lessons() -> Response:
    if refresh_figures("lessons"):
        flash("Figures refreshed.", "message")
    else:
        flash("Redis is not answering, so the figures cannot be kept: each visit computes "
              "them afresh until it is back.", "error")
    return redirect(url_for("admin.lessons"))
