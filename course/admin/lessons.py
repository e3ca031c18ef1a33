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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import flash, redirect, render_template, url_for
from werkzeug.wrappers import Response

from .. import dropoff_stats, health, tracking_stats
from ..content import current_course
from ..lessons import Lesson
from ..render import render_lesson
from ..timeutil import utcnow
from . import bp
from .dashboard import Figures, load_figures, refresh_figures


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


@dataclass(frozen=True)
class LessonFigures:
    """The Lessons page's cached figures, read into their dataclasses, by lesson position."""

    figures: Figures  # the raw values, and as of when
    funnel: dict[int, tracking_stats.LessonFunnel]
    hits: dict[int, tracking_stats.HitCounts]
    loss: dict[int, dropoff_stats.LessonLoss]
    links: dict[int, list[tracking_stats.LinkClicks]]
    stalled_days: int
    left_before_any: dict[str, int]


def lesson_figures(now: datetime) -> LessonFigures:
    """Every per-lesson figure, from the cache both the Lessons page and each lesson's own
    page read (so they agree with each other and with the dashboard)."""
    figures = load_figures(now, "lessons")
    values = figures.values
    return LessonFigures(
        figures=figures,
        funnel={row["position"]: tracking_stats.LessonFunnel(**row)
                for row in values["funnel"]},
        hits={position: tracking_stats.HitCounts(**counts)
              for position, counts in values["hits"]},
        loss={row["position"]: dropoff_stats.LessonLoss(**row)
              for row in values["loss"]["lessons"]},
        links=links_by_lesson(values["links"], current_course().lessons),
        stalled_days=values["loss"]["days"],
        left_before_any=values["loss"]["left_before_any"],
    )


@bp.route("/lessons")
def lessons() -> str:
    course = current_course()
    now = utcnow()
    f = lesson_figures(now)
    funnel = dict(f.funnel)
    empty = tracking_stats.LessonFunnel
    rows = [(lesson, funnel.pop(lesson.position, empty(lesson.position, lesson.slug)))
            for lesson in course.lessons]
    # Positions past the end of today's course (lessons since removed) still count.
    removed = sorted(funnel.values(), key=lambda row: row.position)
    return render_template(
        "admin/lessons.html",
        course=course,
        rows=rows,
        removed=removed,
        totals=tracking_stats.funnel_totals([row for _, row in rows] + removed),
        hits=f.hits,
        no_hits=tracking_stats.HitCounts(),
        completions=f.figures.values["completions"],
        loss=f.loss,
        no_loss=dropoff_stats.LessonLoss,
        stalled_days=f.stalled_days,
        left_before_any=f.left_before_any,
        links=f.links,
        figures=f.figures,
        figures_age=health.age_text(now - f.figures.as_of),
    )


@bp.post("/lessons/refresh")
def refresh_lessons() -> Response:
    if refresh_figures("lessons"):
        flash("Figures refreshed.", "message")
    else:
        flash("Redis is not answering, so the figures cannot be kept: each visit computes "
              "them afresh until it is back.", "error")
    return redirect(url_for("admin.lessons"))
