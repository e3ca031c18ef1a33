"""The SendGrid backend against a real local SendGrid server: batching, retries, errors.

Sleeps are injected (recorded, not slept) so retry waits are checked without waiting;
the retries themselves are real HTTP requests to the server.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from course import create_app
from course.mail import Recipient, Template
from course.mail.errors import (
    AuthError,
    MailError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)
from course.mail.sendgrid import SendGridBackend, retry_wait
from tests.sendgrid_api import validate
from tests.sendgrid_server import SendGridServer

KEY = "SG.test-key"
TEMPLATE = Template(
    subject="Lesson 1: small steps",
    html='<p>%%greeting_html%%</p><p><a href="%%click_0%%">Read</a></p>'
         '<img src="%%open_url%%" alt=""><a href="%%unsubscribe_url%%">Unsubscribe</a>',
    text="%%greeting%%\n\nRead: %%click_0%%\n\nUnsubscribe: %%unsubscribe_url%%",
    from_email="course@minicourse.test",
    from_name="Networking\r\nBcc: evil@example.com",
    reply_to="owner@minicourse.test",
    categories=("lesson", "small-steps"),
)


def recipient(i: int, email: str | None = None, name: str = "") -> Recipient:
    unsubscribe = f"https://course.test/u/token-{i}"
    return Recipient(
        email=email or f"reader{i}@example.com",
        name=name or f"Reader {i}",
        substitutions={
            "%%greeting%%": f"Hi Reader {i},",
            "%%greeting_html%%": f"Hi Reader {i},",
            "%%click_0%%": f"https://course.test/c/click-{i}",
            "%%open_url%%": f"https://course.test/o/open-{i}.gif",
            "%%unsubscribe_url%%": unsubscribe,
        },
        headers={"List-Unsubscribe": f"<{unsubscribe}>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        custom_args={"delivery_id": str(i)},
    )


@pytest.fixture
def sg() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY, forbidden_keys=("SG.read-only",),
                        record_bodies=True) as server:
        yield server


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def backend(sg: SendGridServer, slept: list[float]) -> SendGridBackend:
    return make_backend(sg, slept)


def make_backend(sg: SendGridServer, slept: list[float], **kw: Any) -> SendGridBackend:
    options: dict[str, Any] = dict(host=sg.url, timeout=0.5, max_retries=3,
                                   sleep=slept.append, rng=random.Random(3))
    options.update(kw)
    return SendGridBackend(options.pop("api_key", KEY), **options)


def test_a_batch_is_one_request_with_a_personalization_per_recipient(sg, backend):
    results = backend.send_batch(TEMPLATE, [recipient(i) for i in range(3)])

    (request,) = sg.requests
    assert request.status == 202 and request.recipients == 3
    message_id = sg.ledger[0].message_id
    assert results == [results[0]] * 3 and results[0].ok and results[0].message_id == message_id
    for i, entry in enumerate(sg.ledger):
        assert entry.email == f"reader{i}@example.com"
        assert entry.custom_args == {"delivery_id": str(i)}
        assert entry.headers["List-Unsubscribe"] == f"<https://course.test/u/token-{i}>"
        assert entry.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert f"Hi Reader {i}," in entry.html and f"click-{i}" in entry.html
        assert f"https://course.test/o/open-{i}.gif" in entry.html
        assert f"Read: https://course.test/c/click-{i}" in entry.text
        assert "%%" not in entry.html + entry.text


def test_the_request_turns_tracking_off_and_keeps_headers_on_one_line(sg, backend):
    backend.send_batch(TEMPLATE, [recipient(0, name="Doe, Jane;\nBcc: x@example.com")])

    body = sg.requests[0].body
    assert body["tracking_settings"]["click_tracking"]["enable"] is False
    assert body["tracking_settings"]["open_tracking"]["enable"] is False
    assert body["categories"] == ["lesson", "small-steps"]
    assert body["reply_to"] == {"email": "owner@minicourse.test"}
    assert body["from"]["name"] == "Networking Bcc: evil@example.com"
    assert body["personalizations"][0]["to"] == [
        {"email": "reader0@example.com", "name": "Doe Jane Bcc: x@example.com"}]
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert "mail_settings" not in body


def test_placeholders_in_the_subject_are_filled_per_recipient_on_one_line(sg, backend):
    template = Template(subject="For you: %%greeting%%", html="<p>x</p>", text="x",
                        from_email="course@minicourse.test")
    evil = recipient(0)
    evil.substitutions["%%greeting%%"] = "Hi\r\nBcc: x@example.com"

    backend.send_batch(template, [evil, recipient(1)])

    assert [e.subject for e in sg.ledger] == ["For you: Hi Bcc: x@example.com",
                                              "For you: Hi Reader 1,"]


def test_sandbox_mode_is_requested_when_configured(sg, slept):
    results = make_backend(sg, slept, sandbox=True).send_batch(TEMPLATE, [recipient(0)])

    assert sg.requests[0].body["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert sg.requests[0].status == 200 and results[0].ok
    assert sg.ledger[0].sandbox


def test_1500_recipients_go_in_two_requests(sg, backend):
    results = backend.send_batch(TEMPLATE, [recipient(i) for i in range(1500)])

    assert [r.recipients for r in sg.requests] == [1000, 500]
    assert len(results) == 1500 and all(r.ok for r in results)
    assert results[0].message_id != results[-1].message_id
    counts = sg.count_by_recipient()
    assert len(counts) == 1500 and set(counts.values()) == {1}


def test_a_429_waits_until_the_reset_then_sends_once(sg, backend, slept):
    sg.fail_next(429, reset_in=2)

    results = backend.send_batch(TEMPLATE, [recipient(0)])

    assert results[0].ok
    assert len(slept) == 1 and 2 <= slept[0] <= 3.1  # the reset is whole epoch seconds
    assert [r.status for r in sg.requests] == [429, 202]
    assert sg.count_by_recipient() == {"reader0@example.com": 1}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_is_retried_after_a_jittered_backoff(sg, backend, slept, status):
    sg.fail_next(status)

    assert backend.send_batch(TEMPLATE, [recipient(0)])[0].ok

    assert len(slept) == 1 and 0 <= slept[0] <= backend.backoff_base
    assert [r.status for r in sg.requests] == [status, 202]
    assert len(sg.ledger) == 1


def test_5xx_until_retries_run_out_is_a_transient_error(sg, backend, slept):
    sg.fail_next(503, times=10)

    with pytest.raises(TransientError) as caught:
        backend.send_batch(TEMPLATE, [recipient(0), recipient(1)])

    assert len(sg.requests) == backend.max_retries + 1
    assert [s <= backend.backoff_base * 2 ** k for k, s in enumerate(slept)] == [True] * 3
    assert "503" in str(caught.value)
    assert caught.value.results == [None, None]
    assert sg.ledger == []


def test_429_until_retries_run_out_carries_retry_after(sg, backend):
    sg.fail_next(429, reset_in=4, times=10)

    with pytest.raises(TransientError) as caught:
        backend.send_batch(TEMPLATE, [recipient(0)])

    assert caught.value.retry_after is not None and 3 <= caught.value.retry_after <= 5.1


def test_a_reset_beyond_the_longest_wait_gives_up_at_once(sg, slept):
    sg.fail_next(429, reset_in=600)

    with pytest.raises(TransientError) as caught:
        make_backend(sg, slept, max_wait=60).send_batch(TEMPLATE, [recipient(0)])

    assert slept == [] and len(sg.requests) == 1
    assert caught.value.retry_after is not None and caught.value.retry_after > 590


def test_connection_refused_is_retried_then_transient(slept):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = SendGridBackend(KEY, host=f"http://127.0.0.1:{port}", timeout=0.5,
                              max_retries=2, sleep=slept.append)

    with pytest.raises(TransientError, match="cannot reach SendGrid"):
        backend.send_batch(TEMPLATE, [recipient(0)])
    assert len(slept) == 2


def test_an_answer_slower_than_the_timeout_is_an_unknown_outcome_not_a_retry(sg, backend):
    sg.delay_next(2.0)

    with pytest.raises(UnknownOutcomeError):
        backend.send_batch(TEMPLATE, [recipient(0)])

    assert len(sg.requests) == 1  # never retried
    assert [e.email for e in sg.ledger] == ["reader0@example.com"]  # SendGrid did take it


@pytest.mark.parametrize("accepted", [True, False])
def test_a_dropped_connection_after_sending_is_an_unknown_outcome(sg, backend, accepted):
    sg.drop_next(accepted=accepted)

    with pytest.raises(UnknownOutcomeError):
        backend.send_batch(TEMPLATE, [recipient(0)])

    assert len(sg.requests) == 1
    assert len(sg.ledger) == (1 if accepted else 0)  # the client cannot tell which


def test_a_400_is_a_permanent_error_with_sendgrids_message(sg, backend, slept):
    sg.fail_next(400, message="The from email does not contain a valid address.")

    with pytest.raises(PermanentError) as caught:
        backend.send_batch(TEMPLATE, [recipient(0), recipient(1)])

    assert caught.value.status == 400
    assert "The from email does not contain a valid address." in str(caught.value)
    assert slept == [] and len(sg.requests) == 1


def test_a_request_sendgrid_refuses_as_a_whole_fails_with_its_field_message(sg, backend):
    bad = Template(subject="x", html="<p>x</p>", text="x", from_email="not-an-address")

    with pytest.raises(PermanentError) as caught:
        backend.send_batch(bad, [recipient(0)])
    assert caught.value.message == "Does not contain a valid address."
    assert caught.value.errors[0]["field"] == "from.email"


def test_recipients_sendgrid_blames_fail_alone_and_the_others_are_sent(sg, backend):
    batch = [recipient(0), recipient(1, email="bad@@example.com"), recipient(2),
             recipient(3, email="READER0@example.com")]

    results = backend.send_batch(TEMPLATE, batch)

    assert [r.ok for r in results] == [True, False, True, False]
    assert "valid address" in results[1].error and "duplicate" in results[3].error
    assert [e.email for e in sg.ledger] == ["reader0@example.com", "reader2@example.com"]
    assert [r.status for r in sg.requests] == [400, 202]


def test_a_413_sends_the_batch_in_halves(sg, backend):
    sg.fail_next(413)

    results = backend.send_batch(TEMPLATE, [recipient(i) for i in range(5)])

    assert all(r.ok for r in results)
    assert [(r.status, r.recipients) for r in sg.requests] == [(413, 0), (202, 2), (202, 3)]


def test_a_413_for_one_recipient_is_permanent(sg, backend):
    sg.fail_next(413)

    with pytest.raises(PermanentError) as caught:
        backend.send_batch(TEMPLATE, [recipient(0)])
    assert caught.value.status == 413


@pytest.mark.parametrize(("key", "status"), [("SG.wrong", 401), ("SG.read-only", 403)])
def test_refused_credentials_are_an_auth_error_without_retry(sg, slept, key, status):
    with pytest.raises(AuthError) as caught:
        make_backend(sg, slept, api_key=key).send_batch(TEMPLATE, [recipient(0)])

    assert caught.value.status == status
    assert slept == [] and len(sg.requests) == 1


def test_a_failure_in_a_later_request_reports_who_was_already_sent(sg, backend):
    sg.pass_next()
    sg.fail_next(503, times=10)

    with pytest.raises(TransientError) as caught:
        backend.send_batch(TEMPLATE, [recipient(i) for i in range(1200)])

    settled = caught.value.results
    assert len(settled) == 1200
    assert all(r is not None and r.ok for r in settled[:1000])
    assert settled[1000:] == [None] * 200
    assert len(sg.ledger) == 1000


def test_every_mail_error_is_a_mail_error():
    for cls in (TransientError, UnknownOutcomeError):
        assert issubclass(cls, MailError)
    assert isinstance(PermanentError(400, "x"), MailError)
    assert isinstance(AuthError(401, "x"), MailError)


def test_retry_wait_reads_the_reset_only_for_a_429():
    assert retry_wait(429, {"X-RateLimit-Reset": "1010"}, now=1000.0) == 10.0
    assert retry_wait(429, {"X-RateLimit-Reset": "990"}, now=1000.0) == 0.0
    assert retry_wait(429, {"X-RateLimit-Reset": "soon"}, now=1000.0) is None
    assert retry_wait(503, {"X-RateLimit-Reset": "1010"}, now=1000.0) is None
    assert retry_wait(503, {"Retry-After": "7"}, now=1000.0) == 7.0
    assert retry_wait(500, {}, now=1000.0) is None


def test_real_lesson_emails_fit_sendgrids_rules(sg, slept, tmp_path: Path):
    """Every lesson, rendered and personalised as the pipeline does, is a valid request
    and arrives with every placeholder filled and its signed links intact."""
    from course.content import current_course
    from course.render import recipient_for, render_lesson

    app = create_app({
        "TESTING": True, "SECRET_KEY": "k" * 40, "BASE_URL": "https://course.example.org",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'unused.db'}",
        "MAIL_BACKEND": "memory", "MAIL_FROM": "course@minicourse.test",
        "RATELIMIT_STORAGE_URI": "memory://", "RATELIMIT_ENABLED": False,
    })
    backend = make_backend(sg, slept)
    with app.app_context():
        course = current_course()
        for lesson in course.lessons:
            rendered = render_lesson(course, lesson)
            batch = [recipient_for(rendered, delivery_id=i, subscriber_id=i,
                                   email=f"r{i}@example.com", name="Ana, from Lyon")
                     for i in range(1, 3)]
            assert validate(backend.body(rendered.template, batch)) == []
            sg.clear()
            assert all(r.ok for r in backend.send_batch(rendered.template, batch))
            entry = sg.ledger[1]
            assert "%%" not in entry.html + entry.text + entry.subject, lesson.slug
            assert entry.html.count("https://course.example.org/c/") >= len(rendered.links)
            assert entry.custom_args == {"delivery_id": "2"}
