"""Confirmation: GET shows a page that POSTs, the POST activates; expired links offer a new one."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from conftest import csrf_from, run_jobs
from flask import Flask
from flask.testing import FlaskClient
from helpers import add_signup_request

from course import tokens
from course.extensions import db
from course.models import Event, EventKind, SignupRequest, Status, Subscriber
from course.timeutil import utcnow


def add(app: Flask, status: str = Status.PENDING, email: str = "ann@example.com") -> int:
    """A subscriber and the signup whose link ``confirm_url`` makes (sent, still owed)."""
    with app.app_context():
        sub = Subscriber(email=email, name="Ann", timezone="Europe/Paris", status=status,
                         consent_at=utcnow())
        db.session.add(sub)
        db.session.commit()
        add_signup_request(sub)
        return sub.id


def get(app: Flask, sub_id: int) -> Subscriber:
    with app.app_context():
        sub = db.session.get(Subscriber, sub_id)
        assert sub is not None
        db.session.expunge(sub)
        return sub


def confirm_url(app: Flask, sub_id: int, purpose: str = "confirm") -> str:
    """The link of the subscriber's latest signup (or a token of another purpose)."""
    with app.app_context():
        req = db.session.scalar(db.select(SignupRequest).where(
            SignupRequest.subscriber_id == sub_id).order_by(SignupRequest.id.desc()))
        nonce = req.nonce if req is not None else "none"
        return f"/confirm/{tokens.make(purpose, {'s': sub_id, 'n': nonce})}"


def press_button(client: FlaskClient, url: str) -> Any:
    """What the page's script (or a person) does: POST the form with its CSRF token."""
    page = client.get(url)
    return client.post(url, data={"csrf_token": csrf_from(page.get_data(as_text=True))})


def events(app: Flask, kind: str) -> int:
    with app.app_context():
        return int(db.session.scalar(
            db.select(db.func.count()).select_from(Event).where(Event.kind == kind)) or 0)


def test_link_from_the_email_confirms_end_to_end(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    page = client.get("/")
    client.post("/", data={"csrf_token": csrf_from(page.get_data(as_text=True)),
                           "email": "ann@example.com", "consent": "y"})
    run_jobs(app)
    [msg] = outbox
    [path] = re.findall(r"http://localhost(/confirm/\S+)", msg.get_body(("plain",)).get_content())
    res = press_button(client, path)
    assert res.status_code == 200
    with app.app_context():
        sub = db.session.scalar(db.select(Subscriber))
        assert sub is not None and sub.status == Status.ACTIVE


def test_get_shows_a_self_submitting_form_and_changes_nothing(
    app: Flask, client: FlaskClient
) -> None:
    sub_id = add(app)
    url = confirm_url(app, sub_id)
    res = client.get(url)
    html = res.get_data(as_text=True)
    assert res.status_code == 200
    assert re.search(rf'<form method="post" action="{re.escape(url)}"[^>]*data-autosubmit', html)
    assert csrf_from(html)
    assert 'src="/static/autosubmit.js"' in html
    assert "<script>" not in html and " style=" not in html
    sub = get(app, sub_id)
    assert (sub.status, sub.confirmed_at, sub.next_send_at) == (Status.PENDING, None, None)
    assert events(app, EventKind.CONFIRM) == 0


def test_autosubmit_script_submits_marked_forms(client: FlaskClient) -> None:
    js = client.get("/static/autosubmit.js").get_data(as_text=True)
    assert "form[data-autosubmit]" in js and ".submit()" in js


def test_post_activates_schedules_lesson_one_and_shows_the_welcome(
    app: Flask, client: FlaskClient
) -> None:
    sub_id = add(app)
    before = utcnow()
    res = press_button(client, confirm_url(app, sub_id))
    html = res.get_data(as_text=True)
    assert res.status_code == 200
    assert "<strong>You&rsquo;re in!</strong> Lesson 1 is on its way" in html  # Markdown
    sub = get(app, sub_id)
    assert sub.status == Status.ACTIVE
    assert sub.confirmed_at is not None and sub.confirmed_at >= before - timedelta(seconds=1)
    assert sub.next_send_at is not None and sub.next_send_at <= utcnow()
    assert sub.next_position == 1


def test_confirming_twice_is_harmless(app: Flask, client: FlaskClient) -> None:
    sub_id = add(app)
    url = confirm_url(app, sub_id)
    press_button(client, url)
    first = get(app, sub_id).confirmed_at
    res = press_button(client, url)
    assert res.status_code == 200 and "You&rsquo;re in!" in res.get_data(as_text=True)
    assert get(app, sub_id).confirmed_at == first
    assert events(app, EventKind.CONFIRM) == 1


def test_post_without_csrf_token_is_refused(app: Flask, client: FlaskClient) -> None:
    sub_id = add(app)
    res = client.post(confirm_url(app, sub_id))
    assert res.status_code == 400
    assert "This form has expired" in res.get_data(as_text=True)
    assert get(app, sub_id).status == Status.PENDING


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("kind", ["garbage", "tampered", "other-purpose"])
def test_bad_token_is_a_400_page(app: Flask, client: FlaskClient, method: str, kind: str) -> None:
    sub_id = add(app)
    good = confirm_url(app, sub_id)
    url = {
        "garbage": "/confirm/not-a-token",
        "tampered": good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
        "other-purpose": confirm_url(app, sub_id, purpose="unsubscribe"),
    }[kind]
    if method == "post":  # a valid CSRF token, so only the link is wrong
        token = csrf_from(client.get("/").get_data(as_text=True))
        res = client.post(url, data={"csrf_token": token})
    else:
        res = client.get(url)
    assert res.status_code == 400
    assert "This link is not valid" in res.get_data(as_text=True)
    assert get(app, sub_id).status == Status.PENDING


def test_link_for_a_deleted_subscriber_is_a_400_page(app: Flask, client: FlaskClient) -> None:
    token = csrf_from(client.get("/").get_data(as_text=True))
    res = client.post(confirm_url(app, 999_999), data={"csrf_token": token})
    assert res.status_code == 400


def test_old_link_after_unsubscribing_does_not_resubscribe(
    app: Flask, client: FlaskClient
) -> None:
    sub_id = add(app, Status.UNSUBSCRIBED)
    res = press_button(client, confirm_url(app, sub_id))
    assert res.status_code == 400
    assert get(app, sub_id).status == Status.UNSUBSCRIBED


def later(hours: int) -> Any:
    return time_machine.travel(datetime.now(UTC) + timedelta(hours=hours), tick=True)


def test_expired_link_offers_a_new_one_and_the_button_resends(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    sub_id = add(app)
    url = confirm_url(app, sub_id)
    with later(73):
        page = client.get(url)
        html = page.get_data(as_text=True)
        assert page.status_code == 410
        assert "This link has expired" in html and "72 hours" in html
        resend_url = f"{url}/resend"
        assert f'action="{resend_url}"' in html
        # Pressing the confirm button on a stale page does not confirm either.
        stale = client.post(url, data={"csrf_token": csrf_from(html)})
        assert stale.status_code == 410
        assert get(app, sub_id).status == Status.PENDING
        res = client.post(resend_url, data={"csrf_token": csrf_from(html)})
        assert res.status_code == 200
        assert "Check your inbox" in res.get_data(as_text=True)
    run_jobs(app)
    [msg] = outbox
    assert msg["To"].addresses[0].addr_spec == "ann@example.com"
    [fresh] = re.findall(r"http://localhost(/confirm/\S+)",
                         msg.get_body(("plain",)).get_content())
    assert press_button(client, fresh).status_code == 200
    assert get(app, sub_id).status == Status.ACTIVE


def test_link_still_works_just_before_it_expires(app: Flask, client: FlaskClient) -> None:
    sub_id = add(app)
    url = confirm_url(app, sub_id)
    with later(71):
        assert press_button(client, url).status_code == 200
    assert get(app, sub_id).status == Status.ACTIVE


def test_expired_link_of_a_confirmed_subscriber_just_welcomes_them(
    app: Flask, client: FlaskClient
) -> None:
    sub_id = add(app, Status.ACTIVE)
    url = confirm_url(app, sub_id)
    with later(100):
        res = client.get(url)
    assert res.status_code == 200
    assert "You had already confirmed" in res.get_data(as_text=True)


def test_resend_sends_nothing_once_the_subscriber_is_no_longer_pending(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    sub_id = add(app, Status.UNSUBSCRIBED)
    url = confirm_url(app, sub_id)
    with later(73):
        html = client.get(url).get_data(as_text=True)
        assert "sign up again" in html and "/resend" not in html
        # Someone posts to the resend address anyway (with a valid CSRF token).
        token = csrf_from(client.get("/").get_data(as_text=True))
        res = client.post(f"{url}/resend", data={"csrf_token": token})
    assert res.status_code == 200
    run_jobs(app)
    assert outbox == []
    assert get(app, sub_id).status == Status.UNSUBSCRIBED


def test_resend_with_a_tampered_token_is_a_400_page(app: Flask, client: FlaskClient) -> None:
    token = csrf_from(client.get("/").get_data(as_text=True))
    res = client.post("/confirm/forged/resend", data={"csrf_token": token})
    assert res.status_code == 400
    assert "This link is not valid" in res.get_data(as_text=True)


def test_resend_without_csrf_token_is_refused(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    sub_id = add(app)
    res = client.post(f"{confirm_url(app, sub_id)}/resend")
    assert res.status_code == 400
    run_jobs(app)
    assert outbox == []
