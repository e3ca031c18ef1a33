"""The audit log: which admin did what to which subscriber, and when.

:func:`record` only adds the entry to the session: the action that caller is doing commits
it together with its own change, so an action that fails (rolled back) records nothing
and an entry never exists without its action. ``detail`` says what changed in numbers,
statuses and lesson slugs, never the subscriber's personal data: an erased subscriber's
history must stay true without it, so a value that looks like an email address is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask_login import current_user

from .extensions import db
from .models import AuditEntry

# What each action is called on the subscriber page (the stored name is the key).
ACTIONS = {
    "pause": "Paused lessons",
    "resume": "Resumed lessons",
    "send_next": "Sent the next lesson now",
    "resend": "Resent a lesson",
    "arrived": "Confirmed a lesson arrived",
    "move": "Moved to another lesson",
    "unsubscribe": "Unsubscribed",
    "erase": "Erased personal data",
    "export": "Exported their data",
}

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Line:
    """One entry as the subscriber page and the export show it."""

    id: int
    created_at: datetime
    admin_email: str
    action: str
    detail: dict[str, Any]
    words: str


def record(subscriber_id: int | None, action: str, **detail: Scalar) -> AuditEntry:
    """Add an entry for ``action`` by the signed-in admin to the current transaction.

    Outside a request (a CLI command) there is no admin, and the entry says so.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    for key, value in detail.items():
        if isinstance(value, str) and "@" in value:
            raise ValueError(f"audit detail {key!r} looks like an email address")
    user = current_user
    signed_in = user is not None and bool(getattr(user, "is_authenticated", False))
    entry = AuditEntry(
        subscriber_id=subscriber_id,
        admin_id=user.id if signed_in else None,
        admin_email=user.email if signed_in else "",
        action=action,
        detail=json.dumps(detail, sort_keys=True, separators=(",", ":")),
    )
    db.session.add(entry)
    return entry


def entries_for(subscriber_id: int) -> list[Line]:
    """Everything done to one subscriber, the newest first."""
    rows = db.session.scalars(
        db.select(AuditEntry)
        .where(AuditEntry.subscriber_id == subscriber_id)
        .order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
    )
    return [_line(entry) for entry in rows]


def _line(entry: AuditEntry) -> Line:
    try:
        detail = json.loads(entry.detail or "{}")
    except ValueError:
        detail = {}
    if not isinstance(detail, dict):
        detail = {}
    return Line(entry.id, entry.created_at, entry.admin_email, entry.action, detail,
                describe(entry.action, detail))


def describe(action: str, detail: dict[str, Any]) -> str:
    """The entry in a plain sentence, e.g. "Moved from lesson 2 to lesson 5"."""
    d = detail
    lesson = f"lesson {d['position']}" if "position" in d else "a lesson"
    if action == "resume" and d.get("next_send_at"):
        return f"Resumed lessons; the next one was due {_when(str(d['next_send_at']))}"
    if action == "send_next":
        return f"Made {lesson} due now, ahead of its schedule"
    if action == "resend":
        was = d.get("was")
        if was == "sent":
            return f"Queued {lesson} to be sent again, although it had been sent"
        return f"Queued {lesson} again (it was {was})" if was else f"Queued {lesson} again"
    if action == "arrived":
        return f"Confirmed {lesson} arrived (it was unconfirmed): marked sent, moved on"
    if action == "move":
        return f"Moved from lesson {d.get('from', '?')} to lesson {d.get('to', '?')}"
    if action in ("unsubscribe", "erase") and d.get("was"):
        cancelled = d.get("cancelled") or 0
        tail = f"; {cancelled} queued lesson(s) cancelled" if cancelled else ""
        return f"{ACTIONS[action]} (was {d['was']}){tail}"
    if action == "export":
        return (f"Exported their data ({d.get('deliveries', 0)} deliveries, "
                f"{d.get('events', 0)} events)")
    return ACTIONS.get(action, action)


def _when(iso: str) -> str:
    """``2026-06-04T07:00:00Z`` as the admin pages write times: ``2026-06-04 07:00 UTC``."""
    if len(iso) >= 16 and iso.endswith("Z"):
        return f"{iso[:10]} {iso[11:16]} UTC"
    return iso
