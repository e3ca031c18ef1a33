"""Pausing and resuming one subscriber from the admin."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine
from conftest import csrf_from
from flask import Flask
from flask.testing import FlaskClient
from test_admin import EMAIL, PASSWORD, add_admin, post_login

from course import pipeline
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Status, Subscriber
from tests.helpers import add_subscriber


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    add_admin(app)
    client = app.test_client()
    assert post_login(client, EMAIL, PASSWORD).status_code == 302
    return client


def post(admin: FlaskClient, sub_id: int, action: str):
    page = admin.get(f"/admin/subscribers/{sub_id}").get_data(as_text=True)
    return admin.post(f"/admin/subscribers/{sub_id}/{action}",
                      data={"csrf_token": csrf_from(page)})


def test_pause_holds_back_the_queued_lesson_and_resume_picks_up_at_the_send_hour(app, outbox):
    add_admin(app)
    with time_machine.travel(datetime(2026, 6, 3, 12, 0, tzinfo=UTC), tick=False):
        admin = app.test_client()  # signed in on the travelled clock
        assert post_login(admin, EMAIL, PASSWORD).status_code == 302
        with app.app_context():
            sub_id = add_subscriber("pause@example.com", timezone="Europe/Paris").id
            pipeline.tick(enqueue=lambda ids: None)
        res = post(admin, sub_id, "pause")
        assert res.status_code == 302
        with app.app_context():
            sub = db.session.get(Subscriber, sub_id)
            assert (sub.status, sub.next_send_at) == (Status.PAUSED, None)
            assert db.session.scalar(db.select(Delivery.status)) == DeliveryStatus.CANCELLED
            pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
        assert outbox == []
        assert "Resume lessons" in admin.get(f"/admin/subscribers/{sub_id}").get_data(True)
        assert post(admin, sub_id, "resume").status_code == 302
        with app.app_context():
            sub = db.session.get(Subscriber, sub_id)
            # 12:00 UTC is 14:00 in Paris, past the 09:00 send hour: tomorrow 09:00 CEST.
            assert sub.status == Status.ACTIVE
            assert sub.next_send_at == datetime(2026, 6, 4, 7, 0, tzinfo=UTC)
    with time_machine.travel(datetime(2026, 6, 4, 7, 0, 30, tzinfo=UTC), tick=False):
        with app.app_context():
            pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
    assert [m["Subject"][:6] for m in outbox] == ["Day 1:"]


def test_only_active_subscribers_pause_and_only_paused_ones_resume(app, admin):
    with app.app_context():
        gone = add_subscriber("gone@example.com", status=Status.UNSUBSCRIBED).id
    res = post(admin, gone, "pause")
    assert res.status_code == 302
    assert "Only an active subscriber can be paused." in admin.get(res.location).get_data(True)
    with app.app_context():
        assert db.session.get(Subscriber, gone).status == Status.UNSUBSCRIBED
    assert post(admin, gone, "resume").status_code == 302
    with app.app_context():
        assert db.session.get(Subscriber, gone).status == Status.UNSUBSCRIBED


def test_actions_need_csrf_and_login(app, admin):
    with app.app_context():
        sub_id = add_subscriber("csrf@example.com").id
    assert admin.post(f"/admin/subscribers/{sub_id}/pause").status_code == 400
    assert app.test_client().post(f"/admin/subscribers/{sub_id}/pause").status_code in (302, 400)
    with app.app_context():
        assert db.session.get(Subscriber, sub_id).status == Status.ACTIVE
    assert post(admin, 10**12, "pause").status_code == 404
