"""The local SendGrid server enforces the v3 rules we rely on and fails on command.

If it were laxer than SendGrid, the backend tests would pass against it and fail in
production; so every rule is pinned here with a direct HTTP request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.sendgrid_server import SendGridServer

KEY = "SG.test-key"


@pytest.fixture
def sg() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY, forbidden_keys=("SG.read-only",)) as server:
        yield server


def request_body(n: int = 1, **top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": {"email": "course@minicourse.test", "name": "Course"},
        "subject": "Lesson for %%name%%",
        "content": [
            {"type": "text/plain", "value": "Hi %%name%%, read %%link%%"},
            {"type": "text/html", "value": '<p>Hi %%name%%, <a href="%%link%%">read</a></p>'},
        ],
        "personalizations": [
            {
                "to": [{"email": f"user{i}@example.com", "name": f"User {i}"}],
                "substitutions": {"%%name%%": f"User {i}", "%%link%%": f"https://x.test/c/{i}"},
                "custom_args": {"delivery_id": str(i)},
                "headers": {"List-Unsubscribe": f"<https://x.test/u/{i}>"},
            }
            for i in range(n)
        ],
    }
    body.update(top)
    return body


def post(sg: SendGridServer, body: Any, key: str | None = KEY,
         timeout: float = 10) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{sg.url}/v3/mail/send", data=data, headers=headers, timeout=timeout)


def test_accepts_a_valid_request_and_ledgers_each_recipient_substituted(sg):
    res = post(sg, request_body(2))

    assert res.status_code == 202 and res.content == b""
    assert res.headers["X-Message-Id"]
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(res.headers)
    first, second = sg.ledger
    assert (first.email, second.email) == ("user0@example.com", "user1@example.com")
    assert first.subject == "Lesson for User 0"
    assert first.text == "Hi User 0, read https://x.test/c/0"
    assert 'href="https://x.test/c/1"' in second.html
    assert second.custom_args == {"delivery_id": "1"}
    assert second.headers == {"List-Unsubscribe": "<https://x.test/u/1>"}
    assert first.message_id == second.message_id == res.headers["X-Message-Id"]
    assert sg.count_by_recipient() == {"user0@example.com": 1, "user1@example.com": 1}


def test_sandbox_mode_answers_200_and_marks_the_entry(sg):
    res = post(sg, request_body(mail_settings={"sandbox_mode": {"enable": True}}))

    assert res.status_code == 200
    assert [e.sandbox for e in sg.ledger] == [True]


@pytest.mark.parametrize(
    ("key", "status"),
    [(None, 401), ("", 401), ("SG.wrong", 401), ("SG.read-only", 403)],
)
def test_refuses_missing_wrong_or_forbidden_keys(sg, key, status):
    res = post(sg, request_body(), key=key)

    assert res.status_code == status
    assert res.json()["errors"][0]["message"]
    assert sg.ledger == []


def _many_personalizations(body: dict[str, Any]) -> None:
    body["personalizations"] = request_body(1001)["personalizations"]


def _many_recipients(body: dict[str, Any]) -> None:
    body["personalizations"] = [
        {"to": [{"email": f"a{i}@example.com"} for i in range(600)]},
        {"to": [{"email": "b@example.com"}],
         "cc": [{"email": f"c{i}@example.com"} for i in range(200)],
         "bcc": [{"email": f"d{i}@example.com"} for i in range(200)]},
    ]


def _duplicate(body: dict[str, Any]) -> None:
    body["personalizations"][1]["to"][0]["email"] = "USER0@example.com"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = body
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is DELETE:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return mutate


DELETE = object()
RULES = [
    ("more than 1,000 personalizations", _many_personalizations, "personalizations"),
    ("more than 1,000 recipients", _many_recipients, "personalizations"),
    ("an address twice in one request", _duplicate, "personalizations.1.to"),
    ("a substitution that is not a string", _set("personalizations.0.substitutions.%%n%%", 3),
     "personalizations.0.substitutions"),
    ("over 10,000 bytes of substitutions",
     _set("personalizations.0.substitutions.%%big%%", "x" * 10_000),
     "personalizations.0.substitutions"),
    ("a custom arg that is not a string", _set("personalizations.0.custom_args.delivery_id", 7),
     "personalizations.0.custom_args"),
    ("custom args of 10,000 bytes", _set("personalizations.0.custom_args.big", "x" * 10_000),
     "personalizations.0.custom_args"),
    ("no from address", _set("from", DELETE), "from.email"),
    ("an invalid recipient address", _set("personalizations.0.to.0.email", "not-an-address"),
     "personalizations.0.to.0.email"),
    ("a comma in a recipient name", _set("personalizations.0.to.0.name", "Doe, Jane"),
     "personalizations.0.to.0.name"),
    ("no recipient", _set("personalizations.0.to", []), "personalizations.0.to"),
    ("no subject anywhere", _set("subject", DELETE), "subject"),
    ("no content", _set("content", DELETE), "content"),
    ("an empty content value", _set("content.1.value", ""), "content.1.value"),
    ("html before plain text", _set("content", [
        {"type": "text/html", "value": "<p>x</p>"}, {"type": "text/plain", "value": "x"}]),
     "content"),
    ("eleven categories", _set("categories", [f"c{i}" for i in range(11)]), "categories"),
    ("a sandbox flag that is not a boolean",
     _set("mail_settings", {"sandbox_mode": {"enable": "true"}}),
     "mail_settings.sandbox_mode.enable"),
]


@pytest.mark.parametrize(("rule", "mutate", "field"), RULES, ids=[r[0] for r in RULES])
def test_breaking_a_v3_rule_is_a_400_naming_the_field(sg, rule, mutate, field):
    body = request_body(2)
    mutate(body)

    res = post(sg, body)

    assert res.status_code == 400, rule
    errors = res.json()["errors"]
    assert field in [e["field"] for e in errors], errors
    assert all(e["message"] and "help" in e for e in errors)
    assert sg.ledger == []


@pytest.mark.parametrize(
    "header",
    ["x-sg-id", "X-SG-EID", "Received", "DKIM-Signature", "Content-Type",
     "Content-Transfer-Encoding", "To", "From", "Subject", "Reply-To", "CC", "BCC"],
)
def test_reserved_headers_are_refused(sg, header):
    body = request_body()
    body["personalizations"][0]["headers"][header] = "x"

    res = post(sg, body)

    assert res.status_code == 400
    assert res.json()["errors"][0]["field"] == "personalizations.0.headers"


def test_a_subject_in_every_personalization_replaces_the_top_level_one(sg):
    body = request_body(2)
    del body["subject"]
    for i, p in enumerate(body["personalizations"]):
        p["subject"] = f"Just for {i}"

    assert post(sg, body).status_code == 202
    assert [e.subject for e in sg.ledger] == ["Just for 0", "Just for 1"]


def test_exactly_1000_personalizations_are_accepted(sg):
    assert post(sg, request_body(1000)).status_code == 202
    assert len(sg.ledger) == 1000


def test_a_body_over_30_mb_is_a_413(sg):
    body = request_body(content=[{"type": "text/plain", "value": "x" * (30 * 1024 * 1024)}])

    res = post(sg, body)

    assert res.status_code == 413
    assert "30MB" in res.json()["errors"][0]["message"]


def test_malformed_json_is_a_400(sg):
    assert post(sg, b"{not json").status_code == 400


@pytest.mark.parametrize("status", [400, 401, 403, 413, 500, 502, 503, 504])
def test_fail_next_answers_that_status_once_and_accepts_nothing(sg, status):
    sg.fail_next(status, message="scripted trouble")

    failed = post(sg, request_body())
    after = post(sg, request_body())

    assert failed.status_code == status
    assert failed.json() == {"errors": [{"message": "scripted trouble", "field": None,
                                         "help": None}]}
    assert after.status_code == 202
    assert len(sg.ledger) == 1
    assert [r.status for r in sg.requests] == [status, 202]


def test_fail_next_429_says_when_the_limit_resets(sg):
    sg.fail_next(429, reset_in=5)

    res = post(sg, request_body())

    assert res.status_code == 429
    assert res.headers["X-RateLimit-Remaining"] == "0"
    assert 4 <= int(res.headers["X-RateLimit-Reset"]) - time.time() <= 6.5
    assert sg.ledger == []


def test_the_rate_limit_is_enforced_per_window():
    with SendGridServer(rate_limit=2, rate_window=30) as sg:
        statuses = [post(sg, request_body(), key="any").status_code for _ in range(3)]
        assert statuses == [202, 202, 429]
        assert len(sg.ledger) == 2


def test_delay_next_accepts_at_once_but_answers_late(sg):
    sg.delay_next(1.0)
    with pytest.raises(requests.Timeout):
        post(sg, request_body(), timeout=0.3)

    assert [e.email for e in sg.ledger] == ["user0@example.com"]  # accepted all the same


@pytest.mark.parametrize("accepted", [True, False])
def test_drop_next_closes_without_answering(sg, accepted):
    sg.drop_next(accepted=accepted)
    with pytest.raises(requests.ConnectionError):
        post(sg, request_body())

    assert len(sg.ledger) == (1 if accepted else 0)
    assert post(sg, request_body()).status_code == 202


def test_latency_delays_every_answer():
    with SendGridServer(latency=0.2) as sg:
        start = time.monotonic()
        assert post(sg, request_body(), key="any").status_code == 202
        assert time.monotonic() - start >= 0.2


def test_chaos_fails_requests_at_random_until_switched_off(sg):
    sg.chaos(p5xx=1.0, seed=7)
    statuses = {post(sg, request_body()).status_code for _ in range(8)}
    sg.chaos()

    assert statuses <= {500, 502, 503, 504} and len(statuses) > 1
    assert sg.ledger == []
    assert post(sg, request_body()).status_code == 202


def test_concurrent_requests_are_all_ledgered_once(sg):
    def send(worker: int) -> None:
        for batch in range(5):
            body = request_body(50)
            for p in body["personalizations"]:
                p["to"][0]["email"] = p["to"][0]["email"].replace("@", f".{worker}.{batch}@")
            assert post(sg, body).status_code == 202

    threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(sg.ledger) == 8 * 5 * 50
    assert sg.duplicates() == {}
    assert len({e.message_id for e in sg.ledger}) == 8 * 5
    assert requests.get(f"{sg.url}/_stats", timeout=5).json()["entries"] == 2000
