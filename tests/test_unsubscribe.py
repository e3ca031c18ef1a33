"""Unsubscribing: a page with a button, the RFC 8058 one-click POST, and joining again."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import csrf_from, run_jobs
from flask import Flask
from flask.testing import FlaskClient

from course import tokens
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Event, EventKind, Status, Subscriber
from course.timeutil import utcnow


def add_subscriber(app: Flask, status: str = Status.ACTIVE) -> int:
    """An active subscriber with lesson 1 sent and lesson 2 queued."""
    with app.app_context():
        sub = Subscriber(email="ann@example.com", name="Ann", timezone="UTC", status=status,
                         next_position=2, confirmed_at=utcnow())
        db.session.add(sub)
        db.session.flush()
        db.session.add_all([
            Delivery(subscriber_id=sub.id, lesson_slug="skeptics-in-your-corner", position=1,
                     status=DeliveryStatus.SENT, sent_at=utcnow()),
            Delivery(subscriber_id=sub.id, lesson_slug="the-comfort-of-the-old-you", position=2,
                     status=DeliveryStatus.QUEUED),
        ])
        db.session.commit()
        return sub.id


def state(app: Flask, sub_id: int) -> tuple[str, list[str]]:
    """The subscriber's status and their deliveries' statuses, by position."""
    with app.app_context():
        sub = db.session.get(Subscriber, sub_id)
        assert sub is not None
        return sub.status, [d.status for d in sub.deliveries]


def unsubscribe_url(app: Flask, sub_id: int, purpose: str = "unsubscribe") -> str:
    with app.app_context():
        payload = {"d": sub_id} if purpose == "open" else {"s": sub_id}
        return f"/u/{tokens.make(purpose, payload)}"


def unsubscribe_events(app: Flask) -> int:
    with app.app_context():
        return int(db.session.scalar(db.select(db.func.count()).select_from(Event).where(
            Event.kind == EventKind.UNSUBSCRIBE)) or 0)


ACTIVE = (Status.ACTIVE, [DeliveryStatus.SENT, DeliveryStatus.QUEUED])
GONE = (Status.UNSUBSCRIBED, [DeliveryStatus.SENT, DeliveryStatus.CANCELLED])


def test_get_shows_a_button_and_changes_nothing(app: Flask, client: FlaskClient) -> None:
    sub_id = add_subscriber(app)
    url = unsubscribe_url(app, sub_id)
    res = client.get(url)
    html = res.get_data(as_text=True)
    assert res.status_code == 200
    assert re.search(rf'<form method="post" action="{re.escape(url)}"', html)
    assert "data-autosubmit" not in html  # a person decides; no script presses it
    assert csrf_from(html) and "ann@example.com" in html
    assert state(app, sub_id) == ACTIVE
    assert unsubscribe_events(app) == 0


def test_button_unsubscribes_cancels_queued_lessons_and_offers_to_rejoin(
    app: Flask, client: FlaskClient
) -> None:
    sub_id = add_subscriber(app)
    url = unsubscribe_url(app, sub_id)
    html = client.get(url).get_data(as_text=True)
    res = client.post(url, data={"csrf_token": csrf_from(html)})
    page = res.get_data(as_text=True)
    assert res.status_code == 200
    assert "You&rsquo;re unsubscribed" in page
    assert state(app, sub_id) == GONE
    # The re-join form posts to the signup with the address filled in and consent to tick.
    assert '<form method="post" action="/" class="signup">' in page
    assert re.search(r'name="email"[^>]*value="ann@example.com"', page)
    assert re.search(r'<input id="consent" name="consent" required type="checkbox"', page)
    assert "checked" not in page


def test_rejoining_from_the_unsubscribed_page_needs_confirmation(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    sub_id = add_subscriber(app)
    url = unsubscribe_url(app, sub_id)
    html = client.get(url).get_data(as_text=True)
    page = client.post(url, data={"csrf_token": csrf_from(html)}).get_data(as_text=True)
    res = client.post("/", data={"csrf_token": csrf_from(page), "email": "ann@example.com",
                                 "name": "Ann", "consent": "y"})
    assert res.status_code == 200 and "Check your inbox" in res.get_data(as_text=True)
    run_jobs(app)  # the signup's job
    assert state(app, sub_id)[0] == Status.PENDING
    assert [m["To"].addresses[0].addr_spec for m in outbox] == ["ann@example.com"]
    assert "/confirm/" in outbox[0].get_body(("plain",)).get_content()


def test_button_without_csrf_token_is_refused(app: Flask, client: FlaskClient) -> None:
    sub_id = add_subscriber(app)
    res = client.post(unsubscribe_url(app, sub_id), data={"confirm": "1"})
    assert res.status_code == 400
    assert "This form has expired" in res.get_data(as_text=True)
    assert state(app, sub_id) == ACTIVE


def test_button_with_a_wrong_csrf_token_is_refused(app: Flask, client: FlaskClient) -> None:
    sub_id = add_subscriber(app)
    res = client.post(unsubscribe_url(app, sub_id), data={"csrf_token": "forged"})
    assert res.status_code == 400
    assert state(app, sub_id) == ACTIVE


ONE_CLICK = {
    "urlencoded": dict(data="List-Unsubscribe=One-Click",
                       content_type="application/x-www-form-urlencoded"),
    "multipart": dict(data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data"),
}


@pytest.mark.parametrize("encoding", sorted(ONE_CLICK))
def test_rfc8058_one_click_post_unsubscribes_without_cookies_or_csrf(
    app: Flask, encoding: str
) -> None:
    sub_id = add_subscriber(app)
    url = unsubscribe_url(app, sub_id)
    provider = app.test_client(use_cookies=False)  # a mail provider: no session, no token
    res = provider.post(url, **ONE_CLICK[encoding])
    assert res.status_code == 200
    assert "Location" not in res.headers
    assert "Set-Cookie" not in res.headers
    assert state(app, sub_id) == GONE
    again = provider.post(url, **ONE_CLICK[encoding])
    assert again.status_code == 200
    assert unsubscribe_events(app) == 1


def test_one_click_post_for_a_deleted_subscriber_still_answers_200(app: Flask) -> None:
    res = app.test_client(use_cookies=False).post(unsubscribe_url(app, 424242),
                                                  **ONE_CLICK["urlencoded"])
    assert res.status_code == 200


def test_post_with_another_body_is_not_one_click(app: Flask) -> None:
    sub_id = add_subscriber(app)
    res = app.test_client(use_cookies=False).post(
        unsubscribe_url(app, sub_id), data={"List-Unsubscribe": "Yes-Please"})
    assert res.status_code == 400
    assert state(app, sub_id) == ACTIVE


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("kind", ["garbage", "tampered", "open-token", "confirm-token"])
def test_bad_or_foreign_token_is_a_400_page(app: Flask, method: str, kind: str) -> None:
    sub_id = add_subscriber(app)
    good = unsubscribe_url(app, sub_id)
    url = {
        "garbage": "/u/garbage",
        "tampered": good[:-2] + ("xy" if not good.endswith("xy") else "yz"),
        "open-token": unsubscribe_url(app, sub_id, purpose="open"),
        "confirm-token": unsubscribe_url(app, sub_id, purpose="confirm"),
    }[kind]
    client = app.test_client(use_cookies=False)
    res = client.get(url) if method == "get" else client.post(url, **ONE_CLICK["urlencoded"])
    assert res.status_code == 400
    assert "This link is not valid" in res.get_data(as_text=True)
    assert state(app, sub_id) == ACTIVE


def test_get_after_unsubscribing_says_so_and_offers_to_rejoin(
    app: Flask, client: FlaskClient
) -> None:
    sub_id = add_subscriber(app, status=Status.UNSUBSCRIBED)
    res = client.get(unsubscribe_url(app, sub_id))
    page = res.get_data(as_text=True)
    assert res.status_code == 200
    assert "You&rsquo;re unsubscribed" in page and 'value="ann@example.com"' in page
