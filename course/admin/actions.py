"""Subscriber actions in the admin: each a CSRF-protected POST, each in the audit log.

The work and the audit entry happen in ``course/subscriber_actions.py``; here each action
is turned into a plain message for the admin. An action that makes no sense in the
subscriber's state is a message too (``NotPossible``), never an error page; input no form
on the page can produce (a lesson number out of range) is a 400 page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from flask import flash, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, abort
from werkzeug.wrappers import Response

from .. import queue, sendstate, subscriber_actions
from ..content import current_course
from ..extensions import db
from ..models import Subscriber
from ..subscriber_actions import NotPossible
from . import bp
from .queries import MAX_ID

ERASE_CONFIRM = "erase"  # the value of the checkbox that makes an erase deliberate
POSITION_RE = re.compile(r"[0-9]{1,6}")


def _subscriber(subscriber_id: int) -> Subscriber:
    sub = subscriber_actions.load(subscriber_id) if subscriber_id <= MAX_ID else None
    if sub is None:
        abort(404)
    return sub


def _back(subscriber_id: int) -> Response:
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id))


def _run(subscriber_id: int, action: Callable[[Subscriber], str]) -> Response:
    """Do ``action`` and show what it says, or why it could not be done (nothing changed)."""
    sub = _subscriber(subscriber_id)
    try:
        message = action(sub)
    except NotPossible as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        flash(message)
    return _back(subscriber_id)


def _position() -> int | tuple[str, int]:
    """The lesson number posted as ``position``: 1 to the number of lessons, else a 400."""
    raw = request.form.get("position", "").strip()
    length = current_course().length
    if POSITION_RE.fullmatch(raw) and 1 <= int(raw) <= length:
        return int(raw)
    error = BadRequest(f"Pick a lesson from the list: the lesson number must be from 1 to "
                       f"{length}, and “{raw[:20]}” is not.")
    return render_template("admin/error.html", error=error), 400



def _when_it_leaves(done: str) -> str:
    """``done`` and when the lesson will actually leave."""
    if sendstate.paused():
        return f"{done} Sending is paused, so it goes out once sending resumes."
    if queue.request_tick():
        return f"{done} It goes out within a minute."
    return f"{done} The next tick sends it, within a minute."


@bp.route("/subscribers/<int:subscriber_id>/pause", methods=["POST"])
def pause_subscriber(subscriber_id: int) -> Response:
    def pause(sub: Subscriber) -> str:
        subscriber_actions.pause(sub)
        return "Paused: no more lessons until you resume."
    return _run(subscriber_id, pause)


@bp.route("/subscribers/<int:subscriber_id>/resume", methods=["POST"])
def resume_subscriber(subscriber_id: int) -> Response:
    def resume(sub: Subscriber) -> str:
        subscriber_actions.resume(sub)
        return "Resumed: the next lesson goes out at their next send hour."
    return _run(subscriber_id, resume)


@bp.route("/subscribers/<int:subscriber_id>/send-next", methods=["POST"])
def send_next_lesson(subscriber_id: int) -> Response:
    def send_next(sub: Subscriber) -> str:
        lesson = subscriber_actions.send_next_now(sub)
        return _when_it_leaves(f"Lesson {lesson.position}, “{lesson.title}”, is due now.")
    return _run(subscriber_id, send_next)


@bp.route("/subscribers/<int:subscriber_id>/resend", methods=["POST"])
def resend_lesson(subscriber_id: int) -> Response | tuple[str, int]:
    position = _position()
    if not isinstance(position, int):
        return position
    confirm = request.form.get("confirm", "")

    def resend(sub: Subscriber) -> str:
        lesson, was = subscriber_actions.resend_lesson(sub, position, confirm)
        why = "to be sent once more" if was == "sent" else f"again (it was {was})"
        return _when_it_leaves(f"Lesson {lesson.position} is queued {why}.")
    return _run(subscriber_id, resend)


@bp.route("/subscribers/<int:subscriber_id>/move", methods=["POST"])
def move_subscriber(subscriber_id: int) -> Response | tuple[str, int]:
    position = _position()
    if not isinstance(position, int):
        return position

    def move(sub: Subscriber) -> str:
        due = subscriber_actions.move_to(sub, position)
        if due is None:
            return (f"Moved: lesson {position} is their next lesson; it goes out at their "
                    "send hour once you resume them.")
        return (f"Moved: lesson {position} is their next lesson; it goes out at their next "
                "send hour (use “Send next lesson now” to send it at once).")
    return _run(subscriber_id, move)


@bp.route("/subscribers/<int:subscriber_id>/unsubscribe", methods=["POST"])
def unsubscribe_subscriber(subscriber_id: int) -> Response:
    def unsubscribe(sub: Subscriber) -> str:
        subscriber_actions.unsubscribe(sub)
        return "Unsubscribed: they get no more mail. They can sign up again themselves."
    return _run(subscriber_id, unsubscribe)


@bp.route("/subscribers/<int:subscriber_id>/erase", methods=["POST"])
def erase_subscriber(subscriber_id: int) -> Response:
    def erase(sub: Subscriber) -> str:
        if request.form.get("confirm") != ERASE_CONFIRM:
            raise NotPossible("Nothing was erased: tick the box to confirm first.")
        subscriber_actions.erase(sub)
        return ("Erased: their address, name and consent details are gone and they get no "
                "more mail. Their anonymous lesson history stays in the figures.")
    return _run(subscriber_id, erase)


@bp.route("/subscribers/<int:subscriber_id>/export", methods=["POST"])
def export_subscriber_data(subscriber_id: int) -> Response:
    """Their data as a JSON download (a POST, so every export is in the audit log)."""
    sub = _subscriber(subscriber_id)
    data = subscriber_actions.export(sub)
    body = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return Response(body, mimetype="application/json", headers={
        "Content-Disposition": f'attachment; filename="subscriber-{sub.id}.json"',
    })
