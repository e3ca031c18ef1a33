"""The audit log: entries ride in the action's own transaction, name the admin, and never
hold the subscriber's personal data."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import time_machine
from flask import Flask
from flask_login import login_user
from sqlalchemy.exc import IntegrityError
from test_admin import EMAIL, add_admin

from course import audit, subscriber_actions
from course.extensions import db
from course.models import AdminUser, AuditEntry, Status, Subscriber
from tests.helpers import add_subscriber


def entries() -> list[AuditEntry]:
    return list(db.session.scalars(db.select(AuditEntry).order_by(AuditEntry.id)))


def signed_in(app: Flask) -> AdminUser:
    """Sign the first admin in for the current (test) request."""
    user = db.session.scalar(db.select(AdminUser))
    assert user is not None
    login_user(user)
    return user


def test_an_entry_names_the_signed_in_admin_and_commits_with_the_action(app):
    add_admin(app)
    with app.test_request_context(), app.app_context():
        user = signed_in(app)
        sub = add_subscriber("one@example.com")
        entry = audit.record(sub.id, "move", **{"from": 1, "to": 3})
        assert entry in db.session.new  # pending in the caller's transaction, not committed
        db.session.commit()
        assert entries() == [entry]
        assert (entry.subscriber_id, entry.admin_id, entry.admin_email, entry.action) == (
            sub.id, user.id, EMAIL, "move")
        assert json.loads(entry.detail) == {"from": 1, "to": 3}


def test_a_rolled_back_action_leaves_no_entry(app):
    with app.test_request_context(), app.app_context():
        sub_id = add_subscriber("two@example.com").id
        audit.record(sub_id, "pause")
        db.session.rollback()
        assert entries() == []


def test_an_action_whose_commit_fails_records_nothing_and_changes_nothing(app):
    """Erase's placeholder address is taken (it cannot be, short of a hand-made row): the
    whole transaction fails, the audit entry with it."""
    with app.test_request_context(), app.app_context():
        sub = add_subscriber("three@example.com", name="Three")
        add_subscriber(subscriber_actions.erased_address(sub.id))
        with pytest.raises(IntegrityError):
            subscriber_actions.erase(sub)
        db.session.rollback()
        assert entries() == []
        again = db.session.get(Subscriber, sub.id)
        assert (again.email, again.name, again.status) == (
            "three@example.com", "Three", Status.ACTIVE)


def test_outside_a_request_the_entry_says_no_admin(app):
    with app.app_context():
        sub = add_subscriber("cli@example.com")
        subscriber_actions.pause(sub)
        [entry] = entries()
        assert (entry.admin_id, entry.admin_email, entry.action) == (None, "", "pause")
        assert audit.entries_for(sub.id)[0].words == "Paused lessons"


def test_detail_that_looks_like_an_address_or_an_unknown_action_is_refused(app):
    with app.app_context():
        sub_id = add_subscriber("four@example.com").id
        with pytest.raises(ValueError, match="email address"):
            audit.record(sub_id, "unsubscribe", was="four@example.com")
        with pytest.raises(ValueError, match="unknown audit action"):
            audit.record(sub_id, "delete_everything")
        db.session.commit()
        assert entries() == []


def test_entries_for_lists_one_subscribers_entries_newest_first_in_words(app):
    with app.app_context():
        sub_id = add_subscriber("five@example.com").id
        other_id = add_subscriber("six@example.com").id
        for day, (action, detail) in enumerate([
            ("pause", {"cancelled": 0}),
            ("resend", {"position": 2, "lesson": "two", "was": "unconfirmed"}),
            ("export", {"deliveries": 2, "events": 5}),
        ], start=1):
            with time_machine.travel(datetime(2026, 3, day, 9, 0, tzinfo=UTC), tick=False):
                audit.record(sub_id, action, **detail)
                audit.record(other_id, "unsubscribe", was="active")
                db.session.commit()
        lines = audit.entries_for(sub_id)
        assert [(line.created_at.day, line.action, line.words) for line in lines] == [
            (3, "export", "Exported their data (2 deliveries, 5 events)"),
            (2, "resend", "Queued lesson 2 again (it was unconfirmed)"),
            (1, "pause", "Paused lessons"),
        ]
        assert lines[1].detail == {"position": 2, "lesson": "two", "was": "unconfirmed"}


@pytest.mark.parametrize(("action", "detail", "words"), [
    ("resume", {"next_send_at": "2026-06-04T07:00:00Z"},
     "Resumed lessons; the next one was due 2026-06-04 07:00 UTC"),
    ("send_next", {"position": 4, "lesson": "four"},
     "Made lesson 4 due now, ahead of its schedule"),
    ("resend", {"position": 1, "was": "sent"},
     "Queued lesson 1 to be sent again, although it had been sent"),
    ("move", {"from": 2, "to": 7}, "Moved from lesson 2 to lesson 7"),
    ("unsubscribe", {"was": "paused", "cancelled": 0}, "Unsubscribed (was paused)"),
    ("erase", {"was": "active", "cancelled": 1},
     "Erased personal data (was active); 1 queued lesson(s) cancelled"),
    ("erase", {}, "Erased personal data"),
])
def test_each_entry_reads_as_a_sentence(action, detail, words):
    assert audit.describe(action, detail) == words
