"""Per-recipient substitutions: never read from content, the same in every backend, and
small enough for SendGrid whatever the lesson (issue 10, point 5)."""

from __future__ import annotations

import email
import random
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask import Flask

from course import create_app, pipeline, render, tokens
from course.lesson_fit import MAX_SUBSTITUTION_BYTES, measure
from course.lessons import load_course
from course.mail import Recipient, Template, personalize, substitute
from course.mail.outbox import OutboxBackend
from course.mail.sendgrid import SendGridBackend
from course.mail.smtp import SMTPBackend
from tests.conftest import REDIS_URL
from tests.helpers import SHIPPED_COURSE, add_subscriber, copy_shipped_course
from tests.sendgrid_server import SendGridServer
from tests.test_lessons import run_flask
from tests.test_smtp_backend import Recorder, free_port

ROOT = Path(__file__).resolve().parent.parent
KEY = "SG.test-key"
# What people and lesson authors may write that looks like a placeholder.
HOSTILE = ("%%greeting%%", "%%click_0%%", "%%unsubscribe_url%%", "-unsub-", "-name-",
           "{{name}}", "%%", "%%ab")


@pytest.fixture
def plain_app(tmp_path: Path) -> Flask:
    """An app for rendering only: no database is touched."""
    return create_app({
        "TESTING": True, "SECRET_KEY": "k" * 40, "BASE_URL": "https://course.example.org",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'unused.db'}",
        "REDIS_URL": REDIS_URL, "MAIL_BACKEND": "memory", "MAIL_FROM": "course@minicourse.test",
        "RATELIMIT_STORAGE_URI": "memory://", "RATELIMIT_ENABLED": False,
        "LESSONS_DIR": str(tmp_path / "lessons"),
    })


@pytest.fixture(autouse=True)
def lessons(tmp_path: Path) -> Path:
    folder = copy_shipped_course(tmp_path)
    return folder


def add_to_lesson(folder: Path, position: int, text: str) -> None:
    path = next(folder.glob(f"{position:02d}-*.md"))
    path.write_text(path.read_text() + "\n" + text + "\n")


@pytest.fixture
def sg() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY, record_bodies=True) as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[tuple[Recorder, int]]:
    recorder, port = Recorder(), free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    yield recorder, port
    controller.stop()


def test_substitute_fills_only_the_keys_given_in_one_pass():
    # Content just before a placeholder cannot swallow it ("%%ab" + "%%k%%" reads as
    # "%%ab%%" then "k%%" to a generic %%word%% pattern), and values are not scanned again.
    subs = {"%%k%%": "%%j%%", "%%j%%": "J"}
    assert substitute("%%ab%%k%% and %%j%% and %%other%%", subs) == "%%ab%%j%% and J and %%other%%"
    # A key that begins another does not win at the same position.
    assert substitute("%%a_b%% %%a%%", {"%%a%%": "1", "%%a_b%%": "2"}) == "2 1"
    assert substitute("unchanged", {}) == "unchanged"


def sendgrid_like(text: str, subs: dict[str, str], order: list[str]) -> str:
    """A provider filling placeholders its own way: one key at a time, in any order, over
    and over until nothing changes."""
    while True:
        before = text
        for key in order:
            text = text.replace(key, subs[key])
        if text == before:
            return text


def rendered_with_hostile_content(app: Flask, lessons: Path) -> Any:
    add_to_lesson(lessons, 1, "Authors may write " + " ".join(f"`{h}`" for h in HOSTILE)
                  + " and [a link](https://example.org/x?a=%%greeting%%).")
    with app.app_context():
        course = load_course(lessons)
        return course, render.render_lesson(course, course.lesson_at(1))


def hostile_recipients(rendered: Any) -> list[Recipient]:
    """Names made of every placeholder-looking thing, including this rendering's own."""
    names = [" ".join(HOSTILE), rendered.marks["click"] + rendered.marks["unsubscribe_url"],
             "%%" + rendered.nonce + "_greeting%%", "Ann & <b>Bo</b>"]
    return [render.recipient_for(rendered, delivery_id=i + 1, subscriber_id=i + 1,
                                 email=f"r{i}@example.com", name=name)
            for i, name in enumerate(names)]


def test_hostile_names_and_lesson_text_come_out_exactly_as_written(plain_app, lessons):
    course, rendered = rendered_with_hostile_content(plain_app, lessons)
    with plain_app.app_context():
        recipients = hostile_recipients(rendered)
    template = rendered.template
    for recipient in recipients:
        text = substitute(template.text, recipient.substitutions)
        for hostile in HOSTILE:
            assert f"`{hostile}`" in text  # the lesson's own text, untouched
        assert rendered.nonce not in text + substitute(template.html, recipient.substitutions)
        # Whatever the order and number of passes, the result is the same.
        keys = list(recipient.substitutions)
        orders = [keys, keys[::-1], *(random.Random(i).sample(keys, len(keys)) for i in range(8))]
        for part in (template.html, template.text, template.subject):
            expected = substitute(part, recipient.substitutions)
            for order in orders:
                assert sendgrid_like(part, recipient.substitutions, order) == expected
    first = substitute(template.text, recipients[0].substitutions)
    assert f"Hi {' '.join(HOSTILE)}," in first  # the name as the subscriber wrote it
    # The rendering's own marker is taken out of a name, so it cannot become a placeholder.
    second = substitute(template.text, recipients[1].substitutions)
    assert "Hi %%_click%%%%_unsubscribe_url%%," in second


def message_parts(msg: email.message.EmailMessage) -> tuple[str, str, str]:
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return str(msg["Subject"]), normal(html), normal(text)


def normal(text: str) -> str:
    return text.replace("\r\n", "\n").rstrip("\n")


def test_every_backend_sends_the_same_email_for_the_same_recipient(
        plain_app, lessons, sg, smtp, tmp_path):
    course, rendered = rendered_with_hostile_content(plain_app, lessons)
    with plain_app.app_context():
        recipients = hostile_recipients(rendered)
    template = rendered.template
    expected = [(template.subject, normal(substitute(template.html, r.substitutions)),
                 normal(substitute(template.text, r.substitutions))) for r in recipients]

    memory = [message_parts(personalize(template, r)) for r in recipients]

    outbox_dir = tmp_path / "outbox"
    OutboxBackend(outbox_dir).send_batch(template, recipients)
    files = [email.message_from_bytes(p.read_bytes(), policy=policy.default)
             for p in outbox_dir.glob("*.eml")]
    by_to = {m["To"].addresses[0].addr_spec: message_parts(m) for m in files}
    outbox = [by_to[r.email] for r in recipients]

    recorder, port = smtp
    assert all(res.ok for res in SMTPBackend("127.0.0.1", port, starttls=False)
               .send_batch(template, recipients))
    by_rcpt = {d.rcpt_tos[0]: message_parts(d.message) for d in recorder.delivered}
    smtp_sent = [by_rcpt[r.email] for r in recipients]

    backend = SendGridBackend(KEY, host=sg.url, timeout=2, sleep=lambda s: None)
    assert all(res.ok for res in backend.send_batch(template, recipients))
    sendgrid = [(e.subject, normal(e.html), normal(e.text)) for e in sg.ledger]

    assert memory == outbox == smtp_sent == sendgrid == expected


def test_a_marker_found_in_the_lesson_is_never_used(plain_app, lessons, monkeypatch):
    taken = "mc0123456789ab"
    add_to_lesson(lessons, 2, f"Say `%%{taken}_greeting%%` and {taken}.")
    nonces = iter([taken, "mcfedcba987654"])
    monkeypatch.setattr(render, "new_nonce", lambda: next(nonces))
    with plain_app.app_context():
        course = load_course(lessons)
        rendered = render.render_lesson(course, course.lesson_at(2))
        recipient = render.recipient_for(rendered, delivery_id=1, subscriber_id=1,
                                         email="a@example.com", name="Ann")
    assert rendered.nonce == "mcfedcba987654"
    text = substitute(rendered.template.text, recipient.substitutions)
    assert f"Say `%%{taken}_greeting%%` and {taken}." in text and "Hi Ann," in text


def hundred_links(lessons: Path) -> list[str]:
    urls = [f"https://example.org/resources/{i}?topic=networking&page={i}" for i in range(100)]
    add_to_lesson(lessons, 1, "\n".join(f"- [Resource {i}]({u})" for i, u in enumerate(urls)))
    return urls


def test_a_lesson_of_100_links_fits_in_a_small_personalization(plain_app, lessons):
    hundred_links(lessons)
    with plain_app.app_context():
        course = load_course(lessons)
        fit = measure(course, course.lesson_at(1))
        plain = measure(course, course.lesson_at(2))
    assert fit.problems() == []
    # Each recipient carries the same few values whatever the number of links.
    assert fit == plain and fit.substitutions == 7
    assert fit.substitution_bytes < MAX_SUBSTITUTION_BYTES / 5


def test_a_lesson_of_100_links_is_sent_and_each_link_leads_to_its_target(make_app, lessons, sg):
    urls = hundred_links(lessons)
    app = make_app(LESSONS_DIR=str(lessons.parent), MAIL_BACKEND="sendgrid", SENDGRID_API_KEY=KEY,
                   SENDGRID_API_HOST=sg.url, TRACKING_FAST_PATH=False)
    with app.app_context():
        add_subscriber("ann@example.com", name="Ann")
        pipeline.tick(enqueue=lambda ids: pipeline.send_deliveries(ids))
    [entry] = sg.ledger
    links = [line.rsplit("(", 1)[1].rstrip(")") for line in entry.text.splitlines()
             if line.startswith("- Resource ")]
    assert len(links) == 100
    client = app.test_client()
    for index in (0, 57, 99):
        answer = client.get(links[index].removeprefix("http://localhost"))
        assert (answer.status_code, answer.headers["Location"]) == (302, urls[index])


def test_a_click_link_needs_both_tokens_of_the_same_lesson(make_app, outbox):
    app = make_app()
    url = "https://example.org/guide"
    with app.app_context():
        d = add_subscriber("ann@example.com").id
        link = tokens.make("link", {"l": "lesson-a", "u": url})
        mine = tokens.make("click", {"d": d, "l": "lesson-a"})
        other_lesson = tokens.make("click", {"d": d, "l": "lesson-b"})
        old_style = tokens.make("click", {"d": d, "u": url})
    client = app.test_client()
    answer = client.get(f"/c/{link}/{mine}")
    assert (answer.status_code, answer.headers["Location"]) == (302, url)
    assert client.get(f"/c/{old_style}").headers["Location"] == url  # links in old emails
    for bad in (f"/c/{link}/{other_lesson}", f"/c/{mine}/{link}", f"/c/{link}",
                f"/c/{mine}", f"/c/{link}/{old_style}", f"/c/{old_style}/{mine}"):
        assert client.get(bad).status_code == 400, bad


def test_lessons_check_fails_a_lesson_too_big_for_one_personalization(tmp_path):
    # A long BASE_URL repeats in every link of every recipient.
    base = "https://course.example.org/" + "p" * 2500
    result = run_flask(["lessons", "check"], {"BASE_URL": base}, tmp_path)
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if "bytes of substitutions" in line]
    assert len(problems) == 10 and "SendGrid takes at most 10,000" in problems[0]
    assert problems[0].startswith(str(SHIPPED_COURSE / "01-"))


def test_the_size_is_measured_as_sendgrid_does_in_utf8_bytes_of_keys_and_values():
    from course.lesson_fit import size, worst_names

    assert size({"%%k%%": "é"}) == 5 + 2
    assert all(len(name) == 100 for name in worst_names())  # Subscriber.name's length


def test_template_without_placeholders_is_sent_as_it_is(plain_app):
    template = Template(subject="s %%x%%", html="<p>%%x%%</p>", text="%%x%%",
                        from_email="c@example.com")
    msg = personalize(template, Recipient(email="a@example.com"))
    assert message_parts(msg) == ("s %%x%%", "<p>%%x%%</p>", "%%x%%")
