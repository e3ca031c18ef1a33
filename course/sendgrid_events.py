"""SendGrid's Event Webhook as plain data: signature checks and what each event means.

Nothing here touches the database or a request, so every rule is tested on its own;
``course.webhooks_in`` applies the results in bulk.

Signature (SendGrid's "Signed Event Webhook"): an ECDSA P-256 / SHA-256 signature, base64
DER, in ``X-Twilio-Email-Event-Webhook-Signature``, over the timestamp header's value
followed by the raw body, checked with the base64 DER public key SendGrid shows.

Replays: SendGrid retries a batch for up to a day and gives retried events new
``sg_event_id`` values, so an event is known by what it says (message, event, time,
recipient, link), hashed into :func:`dedup_key`, which ``Event.provider_event_id`` keeps
unique.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from .ids import parse_id
from .models import EventKind, Status

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
FUTURE_SKEW = 60  # seconds a sender's clock may run ahead of ours
KEY_PREFIX = "sg:"  # marks provider events apart from our own pixel and redirects

# SendGrid event name -> our event kind. A bounce of type "blocked" is told apart below.
KINDS = {
    "processed": EventKind.PROCESSED,
    "delivered": EventKind.DELIVERED,
    "deferred": EventKind.DEFERRED,
    "bounce": EventKind.BOUNCE,
    "blocked": EventKind.BLOCKED,
    "dropped": EventKind.DROPPED,
    "spamreport": EventKind.SPAM_REPORT,
    "unsubscribe": EventKind.UNSUBSCRIBE,
    "group_unsubscribe": EventKind.GROUP_UNSUBSCRIBE,
    "open": EventKind.OPEN,
    "click": EventKind.CLICK,
}
# What an event does to the subscriber: only a hard bounce, a complaint or an unsubscribe.
STATUS_FOR = {
    EventKind.BOUNCE: Status.BOUNCED,
    EventKind.SPAM_REPORT: Status.COMPLAINED,
    EventKind.UNSUBSCRIBE: Status.UNSUBSCRIBED,
    EventKind.GROUP_UNSUBSCRIBE: Status.UNSUBSCRIBED,
}
# A later event never softens an earlier one: a complaint outranks a bounce, which
# outranks an unsubscribe, which outranks every "still wants mail" state.
RANK = {Status.UNSUBSCRIBED: 1, Status.BOUNCED: 2, Status.COMPLAINED: 3}
# Facts about the address itself, worth recording for a message we cannot name (the
# confirmation email carries no delivery id). Engagement and opt-outs need our delivery.
BY_EMAIL_OK = frozenset({EventKind.PROCESSED, EventKind.DELIVERED, EventKind.DEFERRED,
                         EventKind.BOUNCE, EventKind.BLOCKED, EventKind.DROPPED})
# Worth keeping on the delivery as its error text, for the admin.
PROBLEMS = frozenset({EventKind.BOUNCE, EventKind.BLOCKED, EventKind.DROPPED})


class BadPayload(ValueError):
    """The body is not a JSON array of events."""


def load_public_key(key: str) -> ec.EllipticCurvePublicKey:
    """The verification key from its base64 DER text (PEM armour tolerated)."""
    text = "".join(
        line for line in key.strip().splitlines() if not line.startswith("-----")
    ).strip()
    try:
        der = base64.b64decode(text, validate=True)
        public = load_der_public_key(der)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("it is not a base64 DER public key (copy it again from SendGrid)") \
            from exc
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ValueError("it is not an elliptic-curve key")
    if not isinstance(public.curve, ec.SECP256R1):
        raise ValueError(f"it is on curve {public.curve.name}, not P-256")
    return public


def check_signature(key: ec.EllipticCurvePublicKey, body: bytes, signature: str | None,
                    timestamp: str | None, now: float, max_age: int) -> str | None:
    """Why the request is refused, or None when it is genuine and fresh."""
    if not signature or not timestamp:
        return "missing signature headers"
    try:
        sent_at = int(timestamp)
    except ValueError:
        return "bad timestamp"
    if sent_at < now - max_age:
        return "stale timestamp"
    if sent_at > now + FUTURE_SKEW:
        return "timestamp in the future"
    try:
        raw_signature = base64.b64decode(signature, validate=True)
        key.verify(raw_signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        return "bad signature"
    return None


def parse_body(body: bytes) -> list[Any]:
    try:
        events = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadPayload("the body is not JSON") from None
    if not isinstance(events, list):
        raise BadPayload("the body is not a JSON array of events")
    return events


@dataclass
class SGEvent:
    """One provider event, reduced to what we record and act on."""

    kind: str
    key: str
    occurred_at: datetime
    delivery_id: int | None
    email: str
    url: str | None = None
    machine: bool = False
    user_agent: str = ""
    reason: str = ""

    @property
    def status(self) -> str | None:
        """The subscriber status this event calls for, if any."""
        return STATUS_FOR.get(self.kind)


def _text(value: Any, limit: int) -> str:
    """A string field, cut to ``limit``; NUL removed, which PostgreSQL's text cannot hold
    (it made a whole signed batch fail with a 503, retried by SendGrid for a day)."""
    return value.replace("\x00", "")[:limit] if isinstance(value, str) else ""


def _delivery_id(value: Any) -> int | None:
    """Our ``custom_args`` id back, if it can be one of our rows (``course.ids``)."""
    return parse_id(value)


def dedup_key(raw: dict[str, Any], kind: str, delivery_id: int | None, email: str,
              url: str | None) -> str:
    """The same event twice gets the same key whatever its ``sg_event_id``."""
    parts = [raw.get("sg_message_id"), kind, raw.get("timestamp"),
             delivery_id if delivery_id is not None else email, url, raw.get("attempt")]
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
    return KEY_PREFIX + digest


def parse_event(raw: Any) -> SGEvent | None:
    """One element of the posted array, or None for what we do not use or cannot read."""
    if not isinstance(raw, dict):
        return None
    name = raw.get("event")
    if not isinstance(name, str):
        return None
    if name == "bounce" and raw.get("type") == "blocked":
        name = "blocked"
    kind = KINDS.get(name)
    timestamp = raw.get("timestamp")
    if kind is None or isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        return None
    try:
        occurred_at = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    delivery_id = _delivery_id(raw.get("delivery_id"))
    email = _text(raw.get("email"), 320).strip().lower()
    if delivery_id is None and not email:
        return None
    url = (_text(raw.get("url"), 4000) or None) if kind == EventKind.CLICK else None
    reason = _text(raw.get("reason"), 1000) or _text(raw.get("response"), 1000)
    return SGEvent(
        kind=kind,
        key=dedup_key(raw, kind, delivery_id, email, url),
        occurred_at=occurred_at,
        delivery_id=delivery_id,
        email=email,
        url=url,
        machine=kind == EventKind.OPEN and raw.get("sg_machine_open") is True,
        user_agent=_text(raw.get("useragent"), 512),
        reason=reason,
    )


def outranks(new: str, current: str) -> bool:
    """Whether moving a subscriber from ``current`` to ``new`` tells more of the truth."""
    return RANK.get(new, 0) > RANK.get(current, 0)


def statuses_below(new: str) -> list[str]:
    """The states a subscriber may leave for ``new`` (for a guarded bulk UPDATE)."""
    return [s for s in Status.ALL if outranks(new, s)]
