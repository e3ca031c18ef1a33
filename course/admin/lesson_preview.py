"""One lesson in the admin: its email as a subscriber gets it, its figures, and a test send.

The email is built by the real renderer (``course.render``) for a sample recipient who is
nobody: its signed links carry delivery and subscriber id 0, which no row ever has (they
lead to a "link not valid" page and record nothing), and the lesson's own links go
straight to their targets instead of through click tracking, so they can be checked. The
HTML part is served on its own URL with a sandboxing CSP and shown in sandboxed iframes, at
a desktop and at a phone width: a lesson's markup never runs with the admin's privileges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from flask import abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response

from .. import dropoff_stats, tracking_stats
from ..content import current_course
from ..extensions import limiter
from ..lessons import Course, Lesson
from ..mail import MailError, Recipient, Template, get_backend, substitute
from ..render import recipient_for, render_lesson
from ..security import CSP
from ..timeutil import utcnow
from . import bp
from .lessons import lesson_figures
from .outbox import without_open_pixel

# No delivery or subscriber has id 0: links signed for it are refused as not valid.
PREVIEW_ID = 0
# A lesson link is put in as it is only when it cannot break out of an href="...".
PLAIN_URL_RE = re.compile(r"^(?:https?://|mailto:)[^\s\"'<>]+$")
SAMPLE_NAME = "Sam"
TEST_PREFIX = "[Test] "
TEST_SEND_LIMIT = "10 per hour"
# The email's own policy: no script, no form, no plugin, inline styles only (emails carry
# their CSS inline), and framed only by our own pages. ``sandbox`` gives it a unique origin.
EMAIL_CSP = (
    "sandbox; default-src 'none'; img-src * data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
PAGE_CSP = CSP + "; frame-src 'self'"


class SendTestForm(FlaskForm):
    """Only the CSRF token: the lesson comes from the URL, the address from the session."""


@dataclass(frozen=True)
class LessonEmail:
    """A lesson personalised for one recipient, ready to show or to send."""

    template: Template
    recipient: Recipient

    @property
    def subject(self) -> str:
        return substitute(self.template.subject, self.recipient.substitutions)

    @property
    def html(self) -> str:
        return substitute(self.template.html, self.recipient.substitutions)

    @property
    def text(self) -> str:
        return substitute(self.template.text, self.recipient.substitutions)


def lesson_or_404(position: int) -> Lesson:
    lesson = current_course().lesson_at(position)
    if lesson is None:
        abort(404)
    return lesson


def sample_email(course: Course, lesson: Lesson, email: str) -> LessonEmail:
    """The lesson as the real send path builds it, for a recipient that is nobody."""
    rendered = render_lesson(course, lesson)
    recipient = recipient_for(rendered, delivery_id=PREVIEW_ID, subscriber_id=PREVIEW_ID,
                              email=email, name=SAMPLE_NAME)
    # No delivery id for the provider's events either: they must not land on a delivery.
    recipient.custom_args = {"preview": "1"}
    return LessonEmail(rendered.with_links(lambda url: bool(PLAIN_URL_RE.match(url))),
                       recipient)


@bp.route("/lessons/<int:position>")
def lesson_preview(position: int) -> Response:
    course = current_course()
    lesson = lesson_or_404(position)
    message = sample_email(course, lesson, current_user.email)
    # The same cached figures as the Lessons page (course/admin/lessons.py).
    figures = lesson_figures(utcnow())
    page = render_template(
        "admin/lesson_preview.html",
        course=course,
        lesson=lesson,
        message=message,
        funnel=figures.funnel.get(position,
                                  tracking_stats.LessonFunnel(position, lesson.slug)),
        hits=figures.hits.get(position, tracking_stats.HitCounts()),
        loss=figures.loss.get(position, dropoff_stats.LessonLoss(position)),
        links=figures.links.get(position, []),
        stalled_days=figures.stalled_days,
        figures_as_of=figures.figures.as_of,
        previous=course.lesson_at(position - 1),
        following=course.lesson_at(position + 1),
        form=SendTestForm(),
        sample_name=SAMPLE_NAME,
        backend=current_app.config["MAIL_BACKEND"],
        test_prefix=TEST_PREFIX,
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


@bp.route("/lessons/<int:position>/email.html")
def lesson_preview_html(position: int) -> Response:
    """The HTML part alone, for the preview's iframes; the open pixel is left out."""
    lesson = lesson_or_404(position)
    message = sample_email(current_course(), lesson, current_user.email)
    response = Response(without_open_pixel(message.html), mimetype="text/html")
    # Set here, so the app-wide defaults (frame-ancestors 'none', DENY) are not applied.
    response.headers["Content-Security-Policy"] = EMAIL_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


def _per_admin() -> str:
    return f"lesson-test:{current_user.get_id()}"


@bp.route("/lessons/<int:position>/test", methods=["POST"])
@limiter.limit(lambda: current_app.config.get("ADMIN_TEST_SEND_LIMIT", TEST_SEND_LIMIT),
               key_func=_per_admin)
def lesson_send_test(position: int) -> Response:
    """Send this lesson to the signed-in admin; no subscriber or delivery row is made."""
    lesson = lesson_or_404(position)  # CSRFProtect has already checked the token
    message = sample_email(current_course(), lesson, current_user.email)
    template = replace(message.template, subject=TEST_PREFIX + message.template.subject,
                       categories=("test", lesson.slug))
    try:
        result = get_backend(current_app.config).send_batch(template, [message.recipient])[0]
        error = "" if result.ok else result.error
    except (MailError, OSError) as exc:  # OSError: an outbox folder we cannot write
        error = str(exc)
    if error:
        flash(f"The test email to {current_user.email} was not sent: {error}", "error")
    else:
        flash(f"Test email sent to {current_user.email} through the "
              f"{current_app.config['MAIL_BACKEND']} mail backend.")
    return redirect(url_for("admin.lesson_preview", position=position))
