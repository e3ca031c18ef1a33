"""``flask course rehearse``: the real tick and sender, on a simulated clock, for one address."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path

import time_machine
from aiosmtpd.controller import Controller

from course import config, pipeline, tracking_buffer, tracking_stats
from course.admin import dashboard, queries
from course.content import current_course
from course.devserver import DEV_SERVER_FILE, record_running
from course.extensions import db
from course.models import Delivery, DeliveryStatus, Status, Subscriber
from course.timeutil import utcnow
from tests.helpers import add_subscriber
from tests.test_smtp_backend import Recorder, free_port


def outbox_subjects(path) -> list[str]:
    msgs = [message_from_bytes(p.read_bytes()) for p in path.glob("*.eml")]
    return sorted(str(m["Subject"]) for m in msgs if m["To"].endswith("<you@example.test>"))


def test_rehearsal_lands_every_lesson_in_the_outbox(make_app, tmp_path):
    outbox = tmp_path / "rehearsal-outbox"
    app = make_app(MAIL_BACKEND="outbox", OUTBOX_DIR=str(outbox))
    result = app.test_cli_runner().invoke(
        args=["course", "rehearse", "--days", "12", "--timezone", "Europe/Paris",
              "you@example.test"]
    )
    assert result.exit_code == 0, result.output
    assert "10 lesson(s) sent; subscriber is now finished" in result.output
    for n in range(1, 11):
        assert f"lesson {n}: Day {n}:" in result.output
    # Lessons after the first land at 09:00 Paris time.
    assert result.output.count(" 09:00 CET ") == 9
    with app.app_context():
        from course.content import current_course

        expected = sorted(lesson.subject for lesson in current_course().lessons)
        sub = db.session.scalar(db.select(Subscriber).where(Subscriber.email == "you@example.test"))
        assert sub.status == Status.FINISHED
    assert outbox_subjects(outbox) == expected


def test_rehearsal_for_fewer_days_stops_part_way(make_app, tmp_path):
    app = make_app(MAIL_BACKEND="outbox", OUTBOX_DIR=str(tmp_path / "o"))
    # Started at noon UTC: lesson 1 now, then 09:00 on each of the next three days.
    with time_machine.travel(datetime(2026, 3, 2, 12, 0, tzinfo=UTC), tick=True):
        result = app.test_cli_runner().invoke(args=["course", "rehearse", "--days", "3",
                                                    "you@example.test"])
    assert result.exit_code == 0, result.output
    assert "4 lesson(s) sent; subscriber is now active, next lesson due" in result.output


def test_rehearsal_touches_no_real_subscriber(make_app, tmp_path, outbox):
    app = make_app()  # memory backend
    with app.app_context():
        real_id = add_subscriber("real@example.com").id
    result = app.test_cli_runner().invoke(args=["course", "rehearse", "--days", "12",
                                                "you@example.test"])
    assert result.exit_code == 0, result.output
    assert {m["To"].addresses[0].addr_spec for m in outbox} == {"you@example.test"}
    with app.app_context():
        assert db.session.scalars(
            db.select(Delivery).where(Delivery.subscriber_id == real_id)
        ).all() == []


def test_rehearsal_refuses_a_real_subscribers_address(app):
    with app.app_context():
        add_subscriber("real@example.com")
    result = app.test_cli_runner().invoke(args=["course", "rehearse", "real@example.com"])
    assert result.exit_code == 2
    assert "is a real subscriber" in result.output


def test_rehearsal_can_be_run_again(app, outbox):
    runner = app.test_cli_runner()
    for _ in range(2):
        result = runner.invoke(args=["course", "rehearse", "--days", "12", "you@example.test"])
        assert result.exit_code == 0, result.output
    assert len(outbox) == 20


def test_rehearsal_rejects_bad_input_clearly(app):
    runner = app.test_cli_runner()
    bad_email = runner.invoke(args=["course", "rehearse", "not-an-email"])
    assert bad_email.exit_code == 2 and "is not a valid email address" in bad_email.output
    bad_zone = runner.invoke(args=["course", "rehearse", "--timezone", "Mars/Base",
                                   "you@example.test"])
    assert bad_zone.exit_code == 2 and "unknown time zone 'Mars/Base'" in bad_zone.output


# Isolated (issue 10, point 6): no real subscriber touched, no figure counts the test
# address, links to the running app, and every lesson that failed printed.


def rehearse(app, *args: str):
    return app.test_cli_runner().invoke(args=["course", "rehearse", *args, "you@example.test"])


def test_rehearsal_leaves_a_live_send_alone(make_app, outbox):
    """The simulated clock runs days ahead: the stale-sending sweep must not run on it."""
    app = make_app()
    with app.app_context():
        real = add_subscriber("real@example.com", next_send_at=None)
        lesson = current_course().lesson_at(1)
        in_flight = Delivery(subscriber_id=real.id, lesson_slug=lesson.slug, position=1,
                             status=DeliveryStatus.SENDING, claimed_at=utcnow(), attempts=1)
        db.session.add(in_flight)
        db.session.commit()
        in_flight_id = in_flight.id
    result = rehearse(app, "--days", "12")
    assert result.exit_code == 0, result.output
    assert "10 lesson(s) sent" in result.output
    with app.app_context():
        d = db.session.get(Delivery, in_flight_id)
        assert (d.status, d.error) == (DeliveryStatus.SENDING, "")


def test_no_figure_counts_the_rehearsal(make_app, outbox):
    app = make_app()
    with app.app_context():
        add_subscriber("real@example.com", next_send_at=None)
    assert rehearse(app, "--days", "12").exit_code == 0
    # Someone opens and clicks the rehearsal's emails: still no figure moves.
    html = outbox[0].get_body(("html",)).get_content()
    client = app.test_client()
    for path in re.findall(r'"http://localhost(/(?:o|c)/[^"]+)"', html):
        client.get(path, headers={"User-Agent": "Mozilla/5.0 (Macintosh) Safari/605"})
    with app.app_context():
        assert tracking_buffer.flush() > 0
        rehearsal = db.session.scalar(db.select(Subscriber).where(Subscriber.is_test))
        assert rehearsal.status == Status.FINISHED and rehearsal.email == "you@example.test"
        figures = dashboard.compute(list(dashboard.FIGURES), utcnow())
        assert figures["status_counts"][Status.ACTIVE] == 1
        assert figures["status_counts"][Status.FINISHED] == 0
        assert sum(n for _, n in figures["signups"]) == 1
        assert figures["funnel"] == []
        assert figures["completions"] == {"started": 0, "completed": 0}
        assert figures["rates"]["sent"] == 0
        assert tracking_stats.hits_per_lesson() == {}
        assert queries.status_counts()[Status.FINISHED] == 0


def test_nothing_more_goes_to_the_address_after_the_rehearsal(make_app, outbox):
    app = make_app()
    result = rehearse(app, "--days", "3")
    assert "nothing more goes to this address" in result.output
    sent = len(outbox)
    with app.app_context():
        pipeline.tick(utcnow() + timedelta(days=30),
                      enqueue=lambda ids: pipeline.send_deliveries(ids))
    assert len(outbox) == sent


def link_bases(messages) -> set[str]:
    text = "".join(m.get_body(("plain",)).get_content() for m in messages)
    return {m.group(1) for m in re.finditer(r"(https?://[^/\s]+)/(?:c|done|l|u)/", text)}


def test_links_point_at_the_running_dev_server(make_app, outbox, tmp_path, monkeypatch):
    monkeypatch.setenv("MINICOURSE_INSTANCE", str(tmp_path / "instance"))
    app = make_app(BASE_URL="http://127.0.0.1:5000")
    record_running(Path(app.instance_path), "http://127.0.0.1:8123")
    result = rehearse(app, "--days", "12")
    assert result.exit_code == 0, result.output
    assert "links point at http://127.0.0.1:8123" in result.output
    assert link_bases(outbox) == {"http://127.0.0.1:8123"}
    # Its links work on the app: the web view of the first lesson.
    web = re.search(r"http://127.0.0.1:8123(/l/\S+)", outbox[0].get_body(("plain",))
                    .get_content()).group(1)
    assert app.test_client().get(web).status_code == 200

    outbox.clear()
    assert rehearse(app, "--days", "1", "--base-url", "https://course.example.org/").exit_code == 0
    assert link_bases(outbox) == {"https://course.example.org"}
    assert rehearse(app, "--base-url", "ftp://x").exit_code == 2

    # A record left by a dev server that is gone is ignored: BASE_URL it is.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (Path(app.instance_path) / DEV_SERVER_FILE).write_text(
        json.dumps({"base_url": "http://127.0.0.1:8123", "pid": gone.pid}))
    outbox.clear()
    assert rehearse(app, "--days", "1").exit_code == 0
    assert link_bases(outbox) == {"http://127.0.0.1:5000"}


def test_base_url_follows_the_port_by_default(tmp_path):
    assert config.load({"PORT": "8000"}, tmp_path)["BASE_URL"] == "http://127.0.0.1:8000"
    assert config.load({}, tmp_path)["BASE_URL"] == "http://127.0.0.1:5000"
    assert config.load({"PORT": "8000", "BASE_URL": "https://x.example/"},
                       tmp_path)["BASE_URL"] == "https://x.example"


def test_a_lesson_the_provider_refuses_is_printed(make_app):
    recorder, port = Recorder(), free_port()
    recorder.refuse.add("you@example.test")
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        app = make_app(MAIL_BACKEND="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=port,
                       SMTP_STARTTLS=False)
        result = rehearse(app, "--days", "12")
    finally:
        controller.stop()
    assert result.exit_code == 1
    assert re.search(r"lesson 1: .*\[failed: .*No such user", result.output), result.output
    assert "0 lesson(s) sent, 1 failed (listed above)" in result.output


def test_a_lesson_that_could_not_be_sent_is_printed(make_app):
    app = make_app(MAIL_BACKEND="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=free_port(),
                   SMTP_STARTTLS=False)
    result = rehearse(app, "--days", "12")
    assert result.exit_code == 1
    assert re.search(r"lesson 1: .*\[queued: cannot connect", result.output), result.output
    assert "0 lesson(s) sent, 1 failed" in result.output
