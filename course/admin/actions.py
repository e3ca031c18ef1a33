"""Subscriber actions in the admin: each a CSRF-protected POST."""

from __future__ import annotations

from flask import flash, redirect, url_for
from werkzeug.exceptions import abort
from werkzeug.wrappers import Response

from .. import subscriber_actions
from . import bp
from .queries import MAX_ID


def _done(subscriber_id: int, ok: bool, did: str, why_not: str) -> Response:
    flash(did if ok else why_not, "message" if ok else "error")
    return redirect(url_for("admin.subscriber", subscriber_id=subscriber_id))


@bp.route("/subscribers/<int:subscriber_id>/pause", methods=["POST"])
def pause_subscriber(subscriber_id: int) -> Response:
    if subscriber_id > MAX_ID:
        abort(404)
    ok = subscriber_actions.pause(subscriber_id)
    return _done(subscriber_id, ok, "Paused: no more lessons until you resume.",
                 "Only an active subscriber can be paused.")


@bp.route("/subscribers/<int:subscriber_id>/resume", methods=["POST"])
def resume_subscriber(subscriber_id: int) -> Response:
    if subscriber_id > MAX_ID:
        abort(404)
    ok = subscriber_actions.resume(subscriber_id)
    return _done(subscriber_id, ok, "Resumed: the next lesson goes out at their next send hour.",
                 "Only a paused subscriber can be resumed.")
