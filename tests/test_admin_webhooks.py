"""Outgoing webhook failures are visible in the admin and can be retried."""

from __future__ import annotations

from conftest import csrf_from
from flask import Flask

from course.extensions import db
from course.models import OutgoingWebhook


def add_webhook(app: Flask, status: str, error: str = "") -> int:
    with app.app_context():
        row = OutgoingWebhook(event_id=f"evt-{status}-{error[:8]}", kind="lesson.sent",
                              url="https://hooks.example.com/in", payload="{}", status=status,
                              attempts=8 if status == "failed" else 1, last_error=error)
        db.session.add(row)
        db.session.commit()
        return row.id


def test_failed_webhooks_are_listed_with_their_error_escaped(app, admin):
    add_webhook(app, "sent")
    add_webhook(app, "failed", "HTTP 500: <script>alert(1)</script>")
    page = admin.get("/admin/webhooks")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "HTTP 500: &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)</script>" not in html
    assert page.headers["Cache-Control"].startswith("no-store")


def test_retry_starts_a_failed_webhook_over(app, admin):
    failed = add_webhook(app, "failed", "timeout")
    sent = add_webhook(app, "sent")
    token = csrf_from(admin.get("/admin/webhooks").get_data(as_text=True))
    res = admin.post("/admin/webhooks/retry", data={"csrf_token": token,
                                                     "id": [str(failed), str(sent)]})
    assert res.status_code == 302
    with app.app_context():
        rows = {w.id: (w.status, w.attempts) for w in db.session.scalars(
            db.select(OutgoingWebhook))}
    assert rows[failed] == ("pending", 0)
    assert rows[sent] == ("sent", 1)  # only failed ones start over


def test_retry_needs_the_csrf_token_and_a_login(app, admin):
    failed = add_webhook(app, "failed", "timeout")
    assert admin.post("/admin/webhooks/retry", data={"id": str(failed)}).status_code == 400
    anonymous = app.test_client()
    assert anonymous.get("/admin/webhooks").status_code == 302
