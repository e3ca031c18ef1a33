"""The send journal: which requests were handed to the mail provider, written down first.

A worker can die (SIGKILL, a crash, an RQ job timeout) anywhere between claiming lessons
and writing back what the provider said. What it leaves ``sending`` is then either never
sent (it died before the request went out, or while waiting out a refusal) or maybe sent
(it died after writing the request, before the answer). Only the second may have reached
the provider, so only those become ``unconfirmed``; the others are simply queued again.

To tell them apart, each request gets a ``send_request`` row naming its deliveries,
committed just before the request is handed to the network (``written``), and marked
``not_accepted`` when an answer refuses it or the connection failed before it was
written (the SendGrid backend reports both through its ``on_request`` hook). One row per
request of up to 1,000 recipients, so the hot path pays one small INSERT per 1,000
lessons. Rows are pruned after ``KEEP_FOR``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update

from .extensions import db
from .models import SendRequest

WRITTEN = "written"
NOT_ACCEPTED = "not_accepted"
KEEP_FOR = timedelta(days=2)


class Journal:
    """One job's requests, as a sweep after a crash would see them.

    ``begin`` names the deliveries of the next request (nothing written yet);
    ``written`` is called just before each attempt at it goes out and ``not_accepted``
    when an attempt is known not to have been taken. ``in_flight`` is what a crash right
    now would leave possibly sent.
    """

    def __init__(self, now: datetime):
        self.now = now
        self.request_id: int | None = None
        self.ids: list[int] = []
        self.state: str | None = None  # None: nothing handed to the network yet

    def begin(self, ids: Sequence[int]) -> None:
        self.request_id, self.ids, self.state = None, list(ids), None

    def event(self, what: str) -> None:
        """The backend's hook: ``"write"`` before each attempt, ``"not_accepted"`` after
        one that was refused or never fully written."""
        if what == "write":
            self.written()
        elif what == "not_accepted":
            self.not_accepted()

    def written(self) -> None:
        if self.state == WRITTEN or not self.ids:
            return
        # Set first: if the commit itself is interrupted the row may exist, so a crash
        # from here on must count the request as possibly sent.
        previous, self.state = self.state, WRITTEN
        if previous is None:
            self.request_id = db.session.execute(
                insert(SendRequest).values(started_at=self.now, state=WRITTEN,
                                           delivery_ids=",".join(map(str, self.ids)))
                .returning(SendRequest.id)).scalar_one()
        else:
            db.session.execute(update(SendRequest).where(SendRequest.id == self.request_id)
                               .values(state=WRITTEN))
        db.session.commit()

    def not_accepted(self) -> None:
        if self.state != WRITTEN:
            return
        db.session.execute(update(SendRequest).where(SendRequest.id == self.request_id)
                           .values(state=NOT_ACCEPTED))
        db.session.commit()
        self.state = NOT_ACCEPTED

    def in_flight(self) -> set[int]:
        """Deliveries of a request written and not (yet) answered."""
        return set(self.ids) if self.state == WRITTEN else set()

    def done(self) -> None:
        """The answer came and the outcome is in hand: nothing is in flight any more."""
        self.ids, self.state = [], None


def written_requests(ids: Iterable[int], since: datetime) -> dict[int, int]:
    """Of ``ids``, those named by a request still ``written`` started at or after
    ``since``: delivery id -> request id."""
    wanted = set(ids)
    found: dict[int, int] = {}
    if not wanted:
        return found
    for request_id, listed in db.session.execute(
        select(SendRequest.id, SendRequest.delivery_ids)
        .where(SendRequest.state == WRITTEN, SendRequest.started_at >= since)
    ):
        for value in listed.split(","):
            if value.isdigit() and int(value) in wanted:
                found[int(value)] = request_id
    return found


def prune(now: datetime) -> None:
    """Forget requests older than ``KEEP_FOR``: past the sweep, nobody reads them."""
    db.session.execute(delete(SendRequest).where(SendRequest.started_at < now - KEEP_FOR))
