"""The database model: the source of truth. Redis only ever holds work in flight."""

from __future__ import annotations

from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from .extensions import Model
from .timeutil import UTCDateTime, utcnow


class Status:
    """Subscriber states."""

    PENDING = "pending"
    ACTIVE = "active"
    PAUSED = "paused"
    FINISHED = "finished"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    ALL = (PENDING, ACTIVE, PAUSED, FINISHED, UNSUBSCRIBED, BOUNCED, COMPLAINED)


class DeliveryStatus:
    """Delivery states: see the README's "Delivery states" section."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    # The request was written but no answer came back: it may have been accepted. Its
    # subscriber waits at this lesson until it is settled (course/unconfirmed.py).
    UNCONFIRMED = "unconfirmed"
    CANCELLED = "cancelled"
    ALL = (QUEUED, SENDING, SENT, FAILED, UNCONFIRMED, CANCELLED)


class EventKind:
    OPEN = "open"
    CLICK = "click"
    COMPLETE = "complete"
    DELIVERED = "delivered"
    BOUNCE = "bounce"
    DROPPED = "dropped"
    SPAM_REPORT = "spamreport"
    UNSUBSCRIBE = "unsubscribe"
    CONFIRM = "confirm"
    SIGNUP = "signup"
    # From SendGrid's Event Webhook (course/sendgrid_events.py).
    PROCESSED = "processed"
    DEFERRED = "deferred"
    BLOCKED = "blocked"  # a bounce of type "blocked": temporary, the address stays
    GROUP_UNSUBSCRIBE = "group_unsubscribe"


class Subscriber(Model):
    __tablename__ = "subscriber"
    __table_args__ = (
        Index("ix_subscriber_status_next_send_at", "status", "next_send_at"),
        # The few test subscribers only (migration 0009): a partial index costs the send
        # path's two updates of every subscriber per lesson nothing.
        Index("ix_subscriber_is_test", "is_test", postgresql_where=text("is_test"),
              sqlite_where=text("is_test")),
        # The admin's subscribers list (migration 0005): its sort orders and filters,
        Index("ix_subscriber_created_at_id", "created_at", "id"),
        Index("ix_subscriber_next_position_id", "next_position", "id"),
        Index("ix_subscriber_status_created_at_id", "status", "created_at", "id"),
        Index("ix_subscriber_status_next_position_id", "status", "next_position", "id"),
        # Its "contains" search is on SubscriberSearch, below.
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    timezone: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING)
    consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    consent_ip: Mapped[str] = mapped_column(String(45), default="")
    consent_user_agent: Mapped[str] = mapped_column(String(512), default="")
    consent_version: Mapped[str] = mapped_column(String(32), default="")
    # A test address (``flask course rehearse``): never in a figure (``real_subscribers``).
    is_test: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set once the subscriber has marked every lesson done.
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The position of the next lesson to send (1-based); past the last lesson when finished.
    next_position: Mapped[int] = mapped_column(Integer, default=1)
    # When the next lesson is due; NULL while a lesson is in flight or nothing is due.
    next_send_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="subscriber", order_by="Delivery.position", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"<Subscriber {self.id} {self.status}>"


class SignupRequest(Model):
    """One signup (or "send me a new link") of an address: its data, its consent and the
    nonce its confirmation link carries.

    The web request only writes this row (the same work whatever the address), and a job
    does the rest. Confirming applies the data of the request whose link was used, so
    signing up a pending address again never changes what an earlier link confirms, and a
    link made before the subscriber left cannot bring them back (rejoining voids the older
    requests). Rows are also the per-address count of confirmations
    (``course.signup.CONFIRMATIONS_PER_DAY``) and, not yet handled or sent, the work still
    owed when Redis was down.
    """

    __tablename__ = "signup_request"
    __table_args__ = (
        Index("ix_signup_request_subscriber_id_created_at", "subscriber_id", "created_at"),
        # The owed-confirmations sweep: unsent requests that still want a confirmation.
        Index("ix_signup_request_state_sent_at", "state", "sent_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # The address as the form gave it (canonical). The subscriber is looked up or created
    # by the job that handles the request, not by the web request (``course.signup``).
    email: Mapped[str] = mapped_column(String(320))
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE")
    )
    # Random, 22 URL-safe characters; "" only for requests carried over by migration 0007.
    nonce: Mapped[str] = mapped_column(String(32))
    # "new": not handled yet; "owed": a confirmation is (or was) sent; "held": none is sent
    # (the address is already taking the course, or its daily count is used up);
    # "confirmed"; "void" (superseded by a rejoin or by another confirmed request).
    state: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100), default="")
    timezone: Mapped[str] = mapped_column(String(64))
    consent_at: Mapped[datetime] = mapped_column(UTCDateTime())
    consent_ip: Mapped[str] = mapped_column(String(45), default="")
    consent_user_agent: Mapped[str] = mapped_column(String(512), default="")
    consent_version: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set when a job for it was put on the queue; left empty when Redis did not answer.
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set when a worker takes it to send (a claim: at most one confirmation per request).
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SubscriberSearch(Model):
    """Each subscriber's email and name again, for the admin's "contains" search; written
    only by database triggers on ``subscriber`` (migration 0005), never by the app.

    Trigram GIN indexes make ``ILIKE '%text%'`` fast at a million rows, but a row's every
    update that is not HOT (and sending updates a subscriber twice per lesson, changing
    indexed columns) adds some thirty entries to each. Email and name almost never change,
    so here the triggers copy them only when they do, and sending pays nothing for search:
    bench/delivery.py measured those indexes at about a fifth of its database time.
    """

    __tablename__ = "subscriber_search"
    __table_args__ = (
        # Trigram GIN indexes on PostgreSQL; plain ones on SQLite, which has no such index
        # (a "contains" search reads the table there, fine at its scale).
        Index("ix_subscriber_search_email_trgm", "email", postgresql_using="gin",
              postgresql_ops={"email": "gin_trgm_ops"}),
        Index("ix_subscriber_search_name_trgm", "name", postgresql_using="gin",
              postgresql_ops={"name": "gin_trgm_ops"}),
    )

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE"), primary_key=True
    )
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(100))


class Delivery(Model):
    """One lesson for one subscriber. Unique per (subscriber, lesson): the double-send guard."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "lesson_slug"),
        Index("ix_delivery_status_enqueued_at", "status", "enqueued_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE"), index=True
    )
    lesson_slug: Mapped[str] = mapped_column(String(100))
    position: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    provider_message_id: Mapped[str] = mapped_column(String(255), default="")
    # The request it was sent (or left unconfirmed) in: a ``SendRequest`` id, or None.
    request_id: Mapped[int | None] = mapped_column(Integer)
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The first open by a person (not a mail privacy proxy or scanner); a human click counts.
    human_opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    open_count: Mapped[int] = mapped_column(Integer, default=0)
    clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    click_count: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    subscriber: Mapped[Subscriber] = relationship(back_populates="deliveries")

    def __repr__(self) -> str:
        return f"<Delivery {self.id} s{self.subscriber_id} #{self.position} {self.status}>"


class SendRequest(Model):
    """One request handed to the mail provider, committed before it is written.

    ``state`` is ``written`` from just before the request goes out until an answer
    refuses it (``refused``: nothing was accepted). After a crash, a kill or a job
    timeout, a delivery left ``sending`` whose request is still ``written`` may have been
    accepted (``unconfirmed``); any other was never sent and is queued again.
    ``delivery_ids`` is a comma-separated list: one row per request, not per recipient,
    so the send path pays one INSERT per 1,000 lessons.
    """

    __tablename__ = "send_request"

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    state: Mapped[str] = mapped_column(String(16), default="written")
    delivery_ids: Mapped[str] = mapped_column(Text, default="")


class Event(Model):
    """Something that happened to a delivery or subscriber (opens, clicks, provider events)."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_kind_occurred_at", "kind", "occurred_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE"), index=True
    )
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("delivery.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(24))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    url: Mapped[str | None] = mapped_column(Text)
    machine: Mapped[bool] = mapped_column(Boolean, default=False)
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    provider_event_id: Mapped[str | None] = mapped_column(String(255), unique=True)


class AdminUser(UserMixin, Model):
    __tablename__ = "admin_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Every session carries the version it signed in under and loads only while it still
    # matches: logout, a new password and disabling bump it, ending every copy of every
    # cookie of this admin (course/admin_accounts.py, end_sessions).
    session_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def is_active(self) -> bool:  # type: ignore[override]
        return self.active

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class OutgoingWebhook(Model):
    """One event for one integrator URL: signed, retried, its failures shown in the admin."""

    __tablename__ = "outgoing_webhook"
    __table_args__ = (Index("ix_outgoing_webhook_status_created_at", "status", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)  # for the receiver's dedup
    kind: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AppState(Model):
    """Small shared facts every process must agree on, such as "sending is paused"."""

    __tablename__ = "app_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class AuditEntry(Model):
    """One admin action, recorded when it happens and shown on the subscriber's page.

    ``admin_email`` is copied so the entry outlives the account; ``detail`` is a short JSON
    object that never holds the subscriber's personal data (an erased subscriber's entries
    must stay true without it).
    """

    __tablename__ = "audit_entry"
    __table_args__ = (Index("ix_audit_entry_subscriber_created", "subscriber_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriber.id", ondelete="SET NULL")
    )
    admin_id: Mapped[int | None] = mapped_column(ForeignKey("admin_user.id", ondelete="SET NULL"))
    admin_email: Mapped[str] = mapped_column(String(320), default="")
    action: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
