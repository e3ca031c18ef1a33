"""Download the subscribers as CSV, streamed, for a spreadsheet or another installation.

The download is a CSRF-protected POST: it is personal data, so a link on another site
must not be able to start it. Rows are read in chunks of ``CHUNK`` by id (keyset paging,
each chunk its own short read), written and sent before the next chunk is read, so a
million subscribers never sit in memory and no transaction stays open for the whole
download. ``flask subscribers import`` reads the same file back (see ``course/csv_io.py``).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Sequence

from flask import render_template, request, stream_with_context
from flask_login import current_user
from sqlalchemy import func
from werkzeug.exceptions import BadRequest
from werkzeug.wrappers import Response

from ..csv_io import BOM, EXPORT_COLUMNS, Counts, export_row
from ..extensions import db, id_in
from ..models import Delivery, Status, Subscriber
from ..timeutil import utcnow
from ..tracking_stats import count_opened
from . import bp
from .queries import SubscriberFilter, status_counts

log = logging.getLogger(__name__)

CHUNK = 1000
SEARCH_MAX = 320
COLUMNS = (
    Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.status, Subscriber.timezone,
    Subscriber.created_at, Subscriber.confirmed_at, Subscriber.consent_at,
    Subscriber.consent_ip, Subscriber.consent_version, Subscriber.next_position,
    Subscriber.completed_at, Subscriber.finished_at, Subscriber.unsubscribed_at,
)


@bp.route("/export")
def export() -> str:
    """The form: which subscribers to download (prefilled from the subscribers' filters)."""
    status = request.args.get("status", "")
    return render_template(
        "admin/export.html",
        statuses=Status.ALL,
        status=status if status in Status.ALL else "",
        search=request.args.get("q", "").strip()[:SEARCH_MAX],
        counts=status_counts(),
        columns=EXPORT_COLUMNS,
    )


@bp.route("/export", methods=["POST"])
def export_download() -> Response | tuple[str, int]:
    status = request.form.get("status", "")
    if status and status not in Status.ALL:
        error = BadRequest(f"There is no status called {status[:40]!r}.")
        return render_template("admin/error.html", error=error), 400
    search = request.form.get("q", "").strip()[:SEARCH_MAX]
    log.info("admin %s exported subscribers (status=%r, search=%r)",
             current_user.email, status or "any", search)
    filename = f"subscribers-{utcnow():%Y%m%d}.csv"
    return Response(
        stream_with_context(_csv(status, search)),
        mimetype="text/csv",
        headers={"Content-Disposition": f"attachment; filename={filename}"},
    )


def _csv(status: str, search: str) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    yield BOM + _drain(buffer)
    last_id = 0
    while True:
        stmt = db.select(*COLUMNS).where(Subscriber.id > last_id)
        if status:
            stmt = stmt.where(Subscriber.status == status)
        if search:  # the same "email or name contains" as the subscribers list
            stmt = stmt.where(*SubscriberFilter(search=search).conditions())
        rows = db.session.execute(stmt.order_by(Subscriber.id).limit(CHUNK)).all()
        if not rows:
            break
        counts = _counts([row.id for row in rows])
        for row in rows:
            writer.writerow(export_row(row._mapping, counts.get(row.id, Counts())))
        last_id = rows[-1].id
        db.session.rollback()  # end this chunk's read: nothing is held between chunks
        yield _drain(buffer)


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def _counts(subscriber_ids: Sequence[int]) -> dict[int, Counts]:
    """Lessons sent, opened (by a person, or done: ``tracking_stats.opened_by_person``),
    clicked and done, for one chunk, in one query."""
    rows = db.session.execute(
        db.select(
            Delivery.subscriber_id,
            func.count(Delivery.sent_at),
            count_opened(),
            func.count(Delivery.clicked_at),
            func.count(Delivery.completed_at),
        )
        .where(id_in(Delivery.subscriber_id, subscriber_ids))
        .group_by(Delivery.subscriber_id)
    ).all()
    return {sid: Counts(sent, int(opened), clicked, done)
            for sid, sent, opened, clicked, done in rows}
