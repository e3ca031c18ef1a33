"""Each confirmation link confirms its own signup; confirmations are counted per address;
confirmations Redis could not take are sent later; the same work for every address;
the address and name rules at every way in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from conftest import csrf_from, run_jobs
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from rq import Queue
from test_signup import UA, add, confirm_links, post_signup, subscriber

from course import confirmations, signup
from course.extensions import db
from course.models import Event, SignupRequest, Status, Subscriber
from course.queue import MAIL_QUEUE, redis_connection


def press(client: FlaskClient, link: str) -> Any:
    page = client.get(link)
    return client.post(link, data={"csrf_token": csrf_from(page.get_data(as_text=True))})


def requests_of(app: Flask, email: str) -> list[SignupRequest]:
    with app.app_context():
        rows = list(db.session.scalars(db.select(SignupRequest).where(
            SignupRequest.email == email).order_by(SignupRequest.id)))
        for row in rows:
            db.session.expunge(row)
        return rows


# --- 6. a link confirms the signup it was sent for ------------------------------------------


def test_each_link_confirms_the_data_of_its_own_signup(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    post_signup(client, "ann@example.com", name="Ann", timezone="Europe/Paris")
    run_jobs(app)
    post_signup(client, "ann@example.com", name="Mallory", timezone="Asia/Tokyo",
                **{"User-Agent": "other"})
    run_jobs(app)
    first, second = confirm_links(outbox, "ann@example.com")
    sub = subscriber(app, "ann@example.com")
    assert sub is not None and (sub.name, sub.timezone) == ("Ann", "Europe/Paris")

    assert press(client, first).status_code == 200
    sub = subscriber(app, "ann@example.com")
    assert sub is not None and (sub.status, sub.name, sub.timezone, sub.consent_user_agent) == (
        Status.ACTIVE, "Ann", "Europe/Paris", UA)
    # The other link now changes nothing: it just welcomes them, with the first data kept.
    assert press(client, second).status_code == 200
    assert subscriber(app, "ann@example.com").name == "Ann"  # type: ignore[union-attr]
    assert [r.state for r in requests_of(app, "ann@example.com")] == ["confirmed", "void"]


def test_the_second_link_confirms_the_second_signup(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    post_signup(client, "ann@example.com", name="Ann")
    post_signup(client, "ann@example.com", name="Annie")
    run_jobs(app)
    _, second = confirm_links(outbox, "ann@example.com")
    assert press(client, second).status_code == 200
    assert subscriber(app, "ann@example.com").name == "Annie"  # type: ignore[union-attr]


def test_an_old_link_after_unsubscribe_and_a_new_signup_does_not_activate(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    post_signup(client, "ann@example.com", name="Ann")
    run_jobs(app)
    [old] = confirm_links(outbox, "ann@example.com")
    with app.app_context():
        signup.unsubscribe(subscriber(app, "ann@example.com").id)  # type: ignore[union-attr]
    post_signup(client, "ann@example.com", name="Someone else")
    res = press(client, old)
    assert res.status_code == 400 and "used up or replaced" in res.get_data(as_text=True)
    sub = subscriber(app, "ann@example.com")
    assert sub is not None and (sub.status, sub.name) == (Status.PENDING, "Ann")
    # Only the new signup's own link confirms it.
    run_jobs(app)
    new = confirm_links(outbox, "ann@example.com")[-1]
    assert press(client, new).status_code == 200
    sub = subscriber(app, "ann@example.com")
    assert sub is not None and (sub.status, sub.name) == (Status.ACTIVE, "Someone else")


def test_a_link_with_a_made_up_nonce_confirms_nothing(app: Flask, client: FlaskClient) -> None:
    post_signup(client, "ann@example.com")
    sub = subscriber(app, "ann@example.com")
    assert sub is not None
    with app.app_context():
        from course import tokens

        link = f"/confirm/{tokens.make('confirm', {'s': sub.id, 'n': 'guessed'})}"
    assert press(client, link).status_code == 400
    assert subscriber(app, "ann@example.com").status == Status.PENDING  # type: ignore[union-attr]


# --- 7. confirmations per address, and no name in them ------------------------------------


def test_an_address_gets_at_most_three_confirmations_a_day_counted_in_the_database(
    app: Flask, client: FlaskClient, outbox: list[Any], redis_conn: Redis
) -> None:
    for _ in range(5):
        assert post_signup(client, "ann@example.com").status_code == 200
        redis_conn.flushdb()  # Redis forgetting everything does not reset the count
    assert len(confirm_links(outbox, "ann@example.com")) == 3
    assert [r.state for r in requests_of(app, "ann@example.com")] == ["owed"] * 3 + ["held"] * 2
    with time_machine.travel(datetime.now(UTC) + timedelta(days=1, minutes=1), tick=True):
        post_signup(client, "ann@example.com")
    assert len(confirm_links(outbox, "ann@example.com")) == 4


def test_the_confirmation_carries_no_name(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    post_signup(client, "ann@example.com", name="Mallory Card")
    run_jobs(app)
    [msg] = outbox
    assert str(msg["To"]) == "ann@example.com"
    assert msg["To"].addresses[0].display_name == ""
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert "Mallory" not in html + text + str(msg)
    assert text.startswith("Hello,")


def test_a_resend_is_a_new_signup_with_the_old_data_and_counts_toward_the_limit(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    post_signup(client, "ann@example.com", name="Ann", timezone="Europe/Paris")
    run_jobs(app)
    [link] = confirm_links(outbox, "ann@example.com")
    token = csrf_from(client.get("/").get_data(as_text=True))
    for _ in range(3):
        assert client.post(f"{link}/resend", data={"csrf_token": token}).status_code == 200
    run_jobs(app)
    assert len(confirm_links(outbox, "ann@example.com")) == 3
    rows = requests_of(app, "ann@example.com")
    assert [r.state for r in rows] == ["owed", "owed", "owed", "held"]
    assert {(r.name, r.timezone, r.consent_at) for r in rows} == {
        ("Ann", "Europe/Paris", rows[0].consent_at)}


# --- 1. a confirmation Redis could not take is sent later ---------------------------------


def test_a_signup_made_while_redis_was_down_gets_its_confirmation_from_the_cron(
    make_app: Any, outbox: list[Any]
) -> None:
    down = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    assert post_signup(down.test_client(), "ann@example.com", handle=False).status_code == 200
    up = make_app()
    with up.app_context():
        assert confirmations.send_owed() == 1
        assert confirmations.send_owed() == 0  # queued once, not again at the next minute
    run_jobs(up)
    [link] = confirm_links(outbox, "ann@example.com")
    assert press(up.test_client(), link).status_code == 200
    # A duplicate job sends nothing: the request was claimed.
    [req] = requests_of(up, "ann@example.com")
    with up.app_context():
        assert confirmations.send(req.id) is False
    assert len(outbox) == 1


def test_a_job_redis_lost_is_queued_again_after_ten_minutes(
    app: Flask, client: FlaskClient, outbox: list[Any], redis_conn: Redis
) -> None:
    post_signup(client, "ann@example.com", handle=False)
    redis_conn.flushdb()
    with app.app_context():
        assert confirmations.send_owed() == 0  # its job may still be on its way
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=11), tick=True):
        with app.app_context():
            assert confirmations.send_owed() == 1
        run_jobs(app)
    assert len(confirm_links(outbox, "ann@example.com")) == 1


def test_the_cron_lets_old_and_finished_signups_be(make_app: Any, outbox: list[Any]) -> None:
    down = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    post_signup(down.test_client(), "old@example.com", handle=False)
    post_signup(down.test_client(), "gone@example.com", handle=False)
    up = make_app()
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=73), tick=True):
        with up.app_context():
            assert confirmations.send_owed() == 0  # older than a link lives: let be
    with up.app_context():
        [gone] = requests_of(up, "gone@example.com")
        signup.handle(gone.id)
        signup.unsubscribe(subscriber(up, "gone@example.com").id)  # type: ignore[union-attr]
        assert confirmations.send_owed() == 1  # old@ is still in time, gone@ left
    run_jobs(up)
    assert [m["To"].addresses[0].addr_spec for m in outbox] == ["old@example.com"]


# --- 3. the same work for every address ------------------------------------------------------


def test_every_signup_writes_the_same_row_and_queues_one_job_whatever_the_address(
    app: Flask, client: FlaskClient
) -> None:
    """The web request looks at nothing the address's state decides: one row, one job."""
    post_signup(client, "pending@example.com")
    for status in (Status.ACTIVE, Status.PAUSED, Status.FINISHED, Status.UNSUBSCRIBED,
                   Status.BOUNCED):
        add(app, f"{status}@example.com", status)
    with app.app_context():
        mail = Queue(MAIL_QUEUE, connection=redis_connection())

    def rows() -> tuple[int, ...]:
        with app.app_context():
            return tuple(int(db.session.scalar(db.select(db.func.count()).select_from(t)) or 0)
                         for t in (SignupRequest, Subscriber, Event))

    for who in ("new", "pending", *Status.ALL):
        before, jobs = rows(), mail.count
        assert post_signup(client, f"{who}@example.com", handle=False).status_code == 200
        after = rows()
        assert (after[0] - before[0], after[1] - before[1], after[2] - before[2],
                mail.count - jobs) == (1, 0, 0, 1), who
        with app.app_context():
            req = db.session.scalar(db.select(SignupRequest).order_by(SignupRequest.id.desc()))
            assert req is not None and (req.email, req.state, req.subscriber_id) == (
                f"{who}@example.com", "new", None)
    # The jobs then do what each address needs.
    run_jobs(app)
    states = {r.email.split("@")[0]: r.state for r in requests_of_all(app)}
    assert states["new"] == "owed" and states["pending"] == "owed"
    assert states[Status.ACTIVE] == states[Status.PAUSED] == "held"
    assert states[Status.UNSUBSCRIBED] == states[Status.BOUNCED] == "owed"  # rejoining


def requests_of_all(app: Flask) -> list[SignupRequest]:
    with app.app_context():
        rows = list(db.session.scalars(db.select(SignupRequest).order_by(SignupRequest.id)))
        for row in rows:
            db.session.expunge(row)
        return rows


# --- 5 and 13. addresses: IDNA domains, no Unicode before the @, test domains in dev only --


def test_a_unicode_domain_is_stored_and_mailed_as_idna(
    app: Flask, client: FlaskClient, outbox: list[Any]
) -> None:
    res = post_signup(client, "Ana@例え.jp")
    assert res.status_code == 200
    assert "ana@xn--r8jz45g.jp" in res.get_data(as_text=True)
    assert subscriber(app, "ana@xn--r8jz45g.jp") is not None
    run_jobs(app)
    [msg] = outbox
    assert bytes(msg).isascii()
    assert str(msg["To"]) == "ana@xn--r8jz45g.jp"


def test_test_domains_are_welcome_in_development(app: Flask, client: FlaskClient) -> None:
    for email in ("ana@example.test", "ana@foo.example", "ana@example.org"):
        assert post_signup(client, email).status_code == 200, email
        assert subscriber(app, email) is not None


@pytest.mark.parametrize("email", ["ana@example.test", "ana@example.com", "ana@mail.example.net",
                                   "ana@foo.example", "ana@x.invalid", "ana@a.localhost"])
def test_test_domains_are_refused_in_production(make_app: Any, email: str) -> None:
    app = make_app(MINICOURSE_ENV="production")
    res = post_signup(app.test_client(), email)
    assert res.status_code == 400
    assert "reserved for examples and tests" in res.get_data(as_text=True)
    assert subscriber(app, email) is None


def test_the_csv_import_applies_the_same_address_rules(make_app: Any, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("email,consent_at\né@例え.jp,2024-05-01T08:00:00Z\n"
                    "ana@例え.jp,2024-05-01T08:00:00Z\nbo@example.test,2024-05-01T08:00:00Z\n",
                    encoding="utf-8")
    app = make_app()
    result = app.test_cli_runner().invoke(args=["subscribers", "import", str(path)])
    assert f"{path}:2: 'é@例え.jp' has accented or non-Latin letters before the @" in result.stderr
    assert "imported 2" in result.output
    assert subscriber(app, "ana@xn--r8jz45g.jp") is not None
    prod = make_app(MINICOURSE_ENV="production")
    with prod.app_context():
        db.session.execute(db.delete(Subscriber))
        db.session.commit()
    result = prod.test_cli_runner().invoke(args=["subscribers", "import", str(path)])
    assert f"{path}:4: 'bo@example.test' is at a domain reserved for examples" in result.stderr
    assert "imported 1" in result.output


def test_the_admin_cli_refuses_a_unicode_local_part(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["admin", "create", "é@例え.jp", "--generate"])
    assert result.exit_code == 2 and "is not a valid email address" in result.output
    assert "Traceback" not in result.output


def test_an_imported_pending_subscriber_gets_a_link_bound_to_a_signup(
    app: Flask, tmp_path: Path, outbox: list[Any]
) -> None:
    path = tmp_path / "people.csv"
    path.write_text("email,name,consent_at\nbo@example.com,Bo,2024-05-01T08:00:00Z\n")
    result = app.test_cli_runner().invoke(args=["subscribers", "import", str(path),
                                                "--confirm"])
    assert result.exit_code == 0, result.output
    run_jobs(app)
    [link] = confirm_links(outbox, "bo@example.com")
    assert press(app.test_client(), link).status_code == 200
    assert subscriber(app, "bo@example.com").status == Status.ACTIVE  # type: ignore[union-attr]


def test_erasing_a_subscriber_forgets_their_signups(app: Flask, client: FlaskClient) -> None:
    from course.subscriber_actions import erase

    post_signup(client, "ann@example.com", name="Ann")
    with app.app_context():
        erase(db.session.scalar(db.select(Subscriber)))  # type: ignore[arg-type]
        assert db.session.scalar(db.select(db.func.count()).select_from(SignupRequest)) == 0
