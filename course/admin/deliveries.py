"""Deliveries that need a person (failed, unconfirmed, stuck sending), settling and
resending them, and lifting a sending pause.

Nothing here resends on its own (invariant 2): a resend is an admin's POST. An
``unconfirmed`` or stuck delivery may already be in the subscriber's inbox, so resending
one ("send it again") needs an explicit "I checked: it was not delivered"; without it
nothing changes at all. "It arrived" settles an unconfirmed one as sent and moves its
subscriber on. Both are audited. After a resend the page reports what became of it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from .. import audit, queue, sendstate, unconfirmed
from ..content import current_course
from ..extensions import db, id_in
from ..ids import parse_id
from ..lessons import Lesson
from ..models import AppState, Delivery, DeliveryStatus
from ..sending import resend
from ..timeutil import utcnow
from . import bp
from .auth import safe_next
from .queries import ATTENTION, MAX_ID, MAYBE_DELIVERED, attention_counts, attention_query
from .queries import resendable as resendable_statuses

log = logging.getLogger(__name__)

CONFIRM_FIELD = "confirm"
CONFIRM_VALUE = "not-delivered"
MAX_IDS = 5000  # per resend request; a page shows ADMIN_PAGE_SIZE rows
LAST_RESEND_KEY = "last_resend"  # the ids of the latest resend, for its follow-up
ID_RE = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class DeliveryRow:
    """A delivery needing attention and its lesson (None once removed from the course)."""

    delivery: Delivery
    lesson: Lesson | None

    @property
    def maybe_delivered(self) -> bool:
        return self.delivery.status in MAYBE_DELIVERED


@bp.route("/deliveries")
def deliveries() -> str:
    status = request.args.get("status", "")
    if status not in ATTENTION:
        status = ""
    # A page number is bound as an OFFSET: keep it in range like an id (course/ids.py).
    page = parse_id(request.args.get("page")) or 1
    pagination = db.paginate(
        attention_query(status),
        page=page,
        per_page=current_app.config["ADMIN_PAGE_SIZE"],
        max_per_page=None,
        error_out=False,
    )
    course = current_course()
    rows = [DeliveryRow(d, course.lesson_by_slug(d.lesson_slug)) for d in pagination.items]
    return render_template(
        "admin/deliveries.html",
        pagination=pagination,
        rows=rows,
        status=status,
        statuses=ATTENTION,
        counts=attention_counts(),
        confirm_field=CONFIRM_FIELD,
        confirm_value=CONFIRM_VALUE,
        any_maybe_delivered=any(row.maybe_delivered for row in rows),
        followup=resend_followup(),
        held=unconfirmed.held(utcnow()),
    )


def resend_followup() -> dict[str, Any] | None:
    """What became of the latest resend: how many were requeued, and how many of them are
    sent, still on their way, failed or unconfirmed now."""
    row = db.session.get(AppState, LAST_RESEND_KEY)
    if row is None:
        return None
    try:
        data = json.loads(row.value)
        ids = [int(i) for i in data["ids"]]
    except (ValueError, KeyError, TypeError):
        return None
    counts: dict[str, int] = {}
    for start in range(0, len(ids), 1000):
        for status, n in db.session.execute(
                db.select(Delivery.status, db.func.count())
                .where(id_in(Delivery.id, ids[start:start + 1000]))
                .group_by(Delivery.status)):
            counts[status] = counts.get(status, 0) + int(n)
    on_way = counts.get(DeliveryStatus.QUEUED, 0) + counts.get(DeliveryStatus.SENDING, 0)
    return {"at": str(data.get("at", ""))[:16].replace("T", " "), "requeued": len(ids),
            "sent": counts.get(DeliveryStatus.SENT, 0), "on_way": on_way,
            "failed": counts.get(DeliveryStatus.FAILED, 0),
            "unconfirmed": counts.get(DeliveryStatus.UNCONFIRMED, 0),
            "cancelled": counts.get(DeliveryStatus.CANCELLED, 0)}


def _remember_resend(ids: list[int]) -> None:
    value = json.dumps({"at": utcnow().isoformat(), "ids": ids})
    row = db.session.get(AppState, LAST_RESEND_KEY)
    if row is None:
        db.session.add(AppState(key=LAST_RESEND_KEY, value=value))
    else:
        row.value = value


def _ids(field: str) -> list[int]:
    """The delivery ids posted in ``field``; anything not a plausible id is dropped."""
    values = request.form.getlist(field)[:MAX_IDS]
    return [int(v) for v in values if ID_RE.fullmatch(v) and 0 < int(v) <= MAX_ID]


def _back() -> str:
    return safe_next(request.form.get("next")) or url_for("admin.deliveries")


@bp.route("/deliveries/resend", methods=["POST"])
def resend_deliveries() -> Response:
    """Resend the ticked deliveries, or (``scope=shown``) every one on the page."""
    ids = _ids("shown" if request.form.get("scope") == "shown" else "id")
    if not ids:
        flash("Nothing was resent: tick the deliveries to resend first.", "error")
        return redirect(_back())
    return _resend(ids)


@bp.route("/deliveries/<int:delivery_id>/resend", methods=["POST"])
def resend_delivery(delivery_id: int) -> Response:
    """Resend one delivery (from its row here or on the subscriber's page)."""
    if delivery_id > MAX_ID:
        abort(404)
    delivery = db.get_or_404(Delivery, delivery_id)
    return _resend([delivery.id])


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _resend(ids: list[int]) -> Response:
    eligible = resendable_statuses(ids)
    risky = [i for i, status in eligible.items() if status in MAYBE_DELIVERED]
    if risky and request.form.get(CONFIRM_FIELD) != CONFIRM_VALUE:
        flash(f"Nothing was resent: {_plural(len(risky), 'delivery', 'deliveries')} may "
              "already have been delivered (unconfirmed or stuck sending). Check the mail "
              "provider's activity log first, then tick “I checked: it was not delivered” "
              "and try again.", "error")
        return redirect(_back())

    def audited(requeued: list[tuple[int, int, int]]) -> None:
        # Each resend is an admin's decision about one subscriber: it goes in their audit
        # log, in the same transaction as the requeue.
        for delivery_id, subscriber_id, position in requeued:
            audit.record(subscriber_id, "resend", position=position, was=eligible[delivery_id])
        _remember_resend(sorted(i for i, _, _ in requeued))

    count = resend(sorted(eligible), before_commit=audited) if eligible else 0
    skipped = len(set(ids)) - count
    if count:
        log.warning("admin %s requeued %d deliveries (%d unconfirmed or stuck)",
                    current_user.email, count, len(risky))
        message = (f"{_plural(count, 'delivery was', 'deliveries were')} requeued. "
                   "The tick sends them within a minute.")
        if sendstate.paused():
            message = (f"{_plural(count, 'delivery was', 'deliveries were')} requeued, but "
                       "sending is paused: they go out once it resumes.")
        elif queue.request_tick():
            message = (f"{_plural(count, 'delivery was', 'deliveries were')} requeued "
                       "and the tick was asked to send them now (within a minute at most).")
        if skipped:
            message += (f" {_plural(skipped, 'other was', 'others were')} not: already "
                        "sent, queued or still being sent, or the subscriber unsubscribed, "
                        "bounced or complained.")
        message += " This page shows how many of them have gone out since."
        flash(message)
    else:
        flash("Nothing was requeued: only failed, unconfirmed or stuck deliveries of "
              "subscribers who still take mail can be resent, and these are not (any more).",
              "error")
    return redirect(_back())


@bp.route("/deliveries/arrived", methods=["POST"])
def deliveries_arrived() -> Response:
    """"It arrived": the ticked unconfirmed deliveries (or one, ``id``) become sent."""
    ids = _ids("shown" if request.form.get("scope") == "shown" else "id")
    if not ids:
        flash("Nothing was marked: tick the deliveries that arrived first.", "error")
        return redirect(_back())
    now = utcnow()
    rows = {d.id: d for d in db.session.scalars(db.select(Delivery).where(
        id_in(Delivery.id, ids), Delivery.status == DeliveryStatus.UNCONFIRMED))}
    changed = unconfirmed.mark_sent(dict.fromkeys(rows, now), now,
                                    "confirmed by an admin: it arrived")
    for delivery_id in changed:
        d = rows[delivery_id]
        audit.record(d.subscriber_id, "arrived", position=d.position)
    db.session.commit()
    if changed:
        log.warning("admin %s confirmed %d unconfirmed deliveries arrived", current_user.email,
                    len(changed))
        flash(f"{_plural(len(changed), 'delivery was', 'deliveries were')} marked sent; "
              "their subscribers move on to the next lesson.")
    else:
        flash("Nothing was marked: only unconfirmed deliveries can be, and these are not "
              "(any more).", "error")
    return redirect(_back())



@bp.route("/sending/resume", methods=["POST"])
def resume_sending() -> Response:
    """Lift the pause now instead of waiting for the tick's credential check."""
    back = safe_next(request.form.get("next")) or url_for("admin.subscribers")
    if sendstate.paused() is None:
        flash("Sending was not paused.")
        return redirect(back)
    released = sendstate.resume()
    log.warning("sending resumed by admin %s", current_user.email)
    queue.request_tick()
    flash(f"Sending resumed: {_plural(released, 'queued delivery goes', 'queued deliveries go')} "
          "out with the next tick, within a minute. If the provider still refuses the "
          "credentials, sending pauses again and the warning comes back.")
    return redirect(back)

