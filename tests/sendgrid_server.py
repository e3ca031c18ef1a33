"""A local SendGrid v3 ``mail/send`` server: real HTTP, the v3 rules we rely on, a ledger.

Tests and benchmarks point the SendGrid backend's ``host`` at it::

    with SendGridServer() as sg:
        backend = SendGridBackend("key", host=sg.url)
        sg.fail_next(429, reset_in=1.0)     # or 500, 503, 400, 401, 403, 413
        ...
        assert sg.count_by_recipient()["a@example.com"] == 1

Every accepted request adds one :class:`LedgerEntry` per recipient, so a test can see
what the provider really took, including when the client never heard back
(:meth:`SendGridServer.delay_next`, :meth:`SendGridServer.drop_next`: a connection
dropped before the body is read, after it is read, or after the request was accepted).
With ``events=True`` each accepted recipient also yields SendGrid Event Webhook events
(``processed``, then ``delivered``) carrying its ``custom_args``:
:meth:`SendGridServer.take_events` hands them over, and ``tests/sendgrid_webhook.py``
posts them signed, late, in batches and some twice, as SendGrid does. Entries keep the
request's content and the recipient's substitutions and fill them in only when read,
which keeps the server cheap under a benchmark. ``python -m tests.sendgrid_server``
runs one in the foreground; ``GET /_stats`` then reports the ledger's counts.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.sendgrid_api import MAX_BODY_BYTES, LedgerEntry, RequestRecord, validate

DEFAULT_MESSAGES = {
    400: "Bad Request",
    401: "The provided authorization grant is invalid, expired, or revoked",
    403: "access forbidden",
    413: "Payload Too Large",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


@dataclass(frozen=True, slots=True)
class Action:
    """What to do with the next request instead of (or on top of) the normal answer."""

    status: int | None = None  # answer this error, accept nothing
    reset_in: float = 1.0  # for 429: X-RateLimit-Reset is now + reset_in
    message: str | None = None
    delay: float = 0.0  # accept, then answer after this many seconds
    drop: bool = False  # close the connection without answering
    accepted: bool = True  # for drop: was the request ledgered before the drop?
    before_body: bool = False  # for drop: close before reading the body at all
    retry_after: float | None = None  # for an error status: a Retry-After header


@dataclass
class Chaos:
    p429: float = 0.0
    p5xx: float = 0.0
    ptimeout: float = 0.0
    pdrop: float = 0.0
    pdrop_early: float = 0.0  # dropped before the body is read
    timeout_delay: float = 2.0
    reset_in: float = 1.0
    rng: random.Random = field(default_factory=random.Random)

    def pick(self) -> Action | None:
        roll = self.rng.random()
        for p, action in (
            (self.p429, Action(status=429, reset_in=self.reset_in)),
            (self.p5xx, Action(status=self.rng.choice((500, 502, 503, 504)))),
            (self.ptimeout, Action(delay=self.timeout_delay)),
            (self.pdrop, Action(drop=True, accepted=self.rng.random() < 0.5)),
            (self.pdrop_early, Action(drop=True, accepted=False, before_body=True)),
        ):
            if roll < p:
                return action
            roll -= p
        return None


class SendGridServer:
    """Runs on 127.0.0.1 in a background thread; scriptable failures, a thread-safe ledger."""

    def __init__(self, *, api_key: str | None = None, forbidden_keys: tuple[str, ...] = (),
                 latency: float = 0.0, rate_limit: int = 10_000, rate_window: float = 1.0,
                 record_bodies: bool = False, events: bool = False, port: int = 0):
        self.api_key, self.forbidden_keys = api_key, set(forbidden_keys)
        self.latency, self.record_bodies = latency, record_bodies
        self.keep_events = events  # gather Event Webhook events for take_events
        self.rate_limit, self.rate_window = rate_limit, rate_window
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._script: deque[Action] = deque()
        self._chaos: Chaos | None = None
        self._ledger: list[LedgerEntry] = []
        self._counts: Counter[str] = Counter()
        self._requests: list[RequestRecord] = []
        self._events: list[dict[str, Any]] = []
        self._window_start, self._window_used = 0.0, 0
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.sg = self
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def start(self) -> SendGridServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SendGridServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting ------------------------------------------------------------------------

    def fail_next(self, status: int, *, reset_in: float = 1.0, message: str | None = None,
                  retry_after: float | None = None, times: int = 1) -> None:
        """The next ``times`` requests get this error status; nothing is accepted."""
        self._push(Action(status=status, reset_in=reset_in, message=message,
                          retry_after=retry_after), times)

    def pass_next(self, *, times: int = 1) -> None:
        """Answer the next requests normally: scripts a failure for the one after."""
        self._push(Action(), times)

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """Accept (and ledger) the next requests at once, but answer after ``seconds``."""
        self._push(Action(delay=seconds), times)

    def drop_next(self, *, accepted: bool, before_body: bool = False, times: int = 1) -> None:
        """Close the connection without answering: before reading the body
        (``before_body``), or after reading it, having ledgered the request or not."""
        self._push(Action(drop=True, accepted=accepted and not before_body,
                          before_body=before_body), times)

    def chaos(self, *, p429: float = 0.0, p5xx: float = 0.0, ptimeout: float = 0.0,
              pdrop: float = 0.0, pdrop_early: float = 0.0, timeout_delay: float = 2.0,
              reset_in: float = 1.0, seed: int | None = None) -> None:
        """Random failures on requests not otherwise scripted; all zero turns chaos off.

        A "timeout" is accepted and answered ``timeout_delay`` seconds late (set it above
        the client's timeout); a drop is accepted or not, at even odds."""
        with self._lock:
            if p429 + p5xx + ptimeout + pdrop + pdrop_early == 0:
                self._chaos = None
            else:
                self._chaos = Chaos(p429, p5xx, ptimeout, pdrop, pdrop_early, timeout_delay,
                                    reset_in, random.Random(seed))

    def _push(self, action: Action, times: int) -> None:
        with self._lock:
            self._script.extend([action] * times)

    def _next_action(self) -> Action | None:
        with self._lock:
            if self._script:
                return self._script.popleft()
            return self._chaos.pick() if self._chaos else None

    # -- what the server saw --------------------------------------------------------------

    @property
    def ledger(self) -> list[LedgerEntry]:
        with self._lock:
            return list(self._ledger)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def count_by_recipient(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)

    def duplicates(self) -> dict[str, int]:
        """Addresses accepted more than once: what a double send looks like."""
        with self._lock:
            return {email: n for email, n in self._counts.items() if n > 1}

    def wait_for(self, entries: int, timeout: float = 5.0) -> list[LedgerEntry]:
        """The ledger once it holds at least ``entries`` entries (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._ledger) >= entries:
                    break
            time.sleep(0.01)
        return self.ledger

    def take_events(self) -> list[dict[str, Any]]:
        """The Event Webhook events of what was accepted since the last call, in order."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self._ledger.clear()
            self._counts.clear()
            self._requests.clear()
            self._script.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self._ledger),
                "recipients": len(self._counts),
                "duplicates": sum(1 for n in self._counts.values() if n > 1),
                "requests": len(self._requests),
                "accepted_requests": sum(1 for r in self._requests if r.accepted),
            }

    # -- used by the handler --------------------------------------------------------------

    def _rate_headers(self, *, consume: bool) -> tuple[bool, dict[str, str]]:
        """A fixed-window limit; True when this request is over it."""
        with self._lock:
            now = time.time()
            if now - self._window_start >= self.rate_window:
                self._window_start, self._window_used = now, 0
            over = consume and self._window_used >= self.rate_limit
            if consume and not over:
                self._window_used += 1
            reset = math.ceil(self._window_start + self.rate_window)
            remaining = max(self.rate_limit - self._window_used, 0)
        return over, self._limit_headers(remaining, reset)

    def _limit_headers(self, remaining: int, reset: float) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.rate_limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(math.ceil(reset))}

    def _record(self, record: RequestRecord, entries: list[LedgerEntry] | None = None) -> None:
        with self._lock:
            self._requests.append(record)
            if entries:
                self._ledger.extend(entries)
                self._counts.update(e.email.lower() for e in entries)
                if self.keep_events:
                    self._events.extend(_events_for(entries))

    def _entries(self, body: dict[str, Any], message_id: str) -> list[LedgerEntry]:
        now = time.time()
        content = tuple((str(c.get("type")), str(c.get("value"))) for c in body["content"])
        top_headers = body.get("headers") or {}
        top_args = body.get("custom_args") or {}
        sandbox = _sandbox(body)
        categories = tuple(body.get("categories") or ())
        entries = []
        for p in body["personalizations"]:
            headers = {**top_headers, **(p.get("headers") or {})}
            args = {**top_args, **(p.get("custom_args") or {})}
            subs = p.get("substitutions") or {}
            subject = p.get("subject") or body.get("subject") or ""
            for kind in ("to", "cc", "bcc"):
                for rcpt in p.get(kind) or ():
                    entries.append(LedgerEntry(
                        email=rcpt["email"], name=rcpt.get("name", ""), message_id=message_id,
                        at=now, sandbox=sandbox, from_email=body["from"]["email"],
                        categories=categories, custom_args=args, headers=headers,
                        substitutions=subs, raw_subject=subject, content=content,
                    ))
        return entries


def _events_for(entries: list[LedgerEntry]) -> list[dict[str, Any]]:
    """What SendGrid's Event Webhook says of accepted recipients: ``processed``, then
    ``delivered``, each with the personalization's ``custom_args`` as top-level keys."""
    out = []
    for n, e in enumerate(entries):
        for kind in ("processed", "delivered"):
            out.append({**e.custom_args, "email": e.email, "event": kind,
                        "timestamp": int(e.at), "sg_message_id":
                        f"{e.message_id}.filter0001.{n}.0",
                        "sg_event_id": secrets.token_urlsafe(16)})
    return out


def _sandbox(body: dict[str, Any]) -> bool:
    settings = (body.get("mail_settings") or {}).get("sandbox_mode") or {}
    return settings.get("enable") is True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default of 5 refuses connections under a benchmark
    sg: SendGridServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out and hang up are part of the tests, not server errors."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        if self.path == "/_stats":
            self._json(200, self.server.sg.stats())
        elif self.path.split("?")[0].rstrip("/") == "/v3/scopes":
            # What a client calls to check its key without sending anything.
            status = self._auth_status()
            if status is None:
                self._json(200, {"scopes": ["mail.send"]})
            else:
                self._json(status, _errors(DEFAULT_MESSAGES[status]))
        else:
            self._json(404, _errors("not found"))

    def do_POST(self) -> None:
        sg = self.server.sg
        if self.path.split("?")[0].rstrip("/") == "/v3/mail/send":
            action = sg._next_action() or Action()
            if action.drop and action.before_body:
                # Hung up on without a byte of the body read: nothing can be accepted.
                sg._record(RequestRecord(None, 0, False, time.time()))
                self.close_connection = True
                return
        else:
            action = Action()
        raw, too_large = self._read_body()
        if raw is None:
            return
        if sg.latency:
            sg._stopping.wait(sg.latency)
        if action.status is not None:
            _, limits = sg._rate_headers(consume=False)
            if action.status == 429:
                limits = sg._limit_headers(0, time.time() + action.reset_in)
            if action.retry_after is not None:
                limits = {**limits, "Retry-After": str(int(action.retry_after))}
            sg._record(RequestRecord(action.status, 0, False, time.time()))
            message = action.message or DEFAULT_MESSAGES.get(action.status, "error")
            self._json(action.status, _errors(message), limits)
            return
        status, payload, body = self._check(raw, too_large)
        over, limits = sg._rate_headers(consume=status is None)
        if status is None and over:
            status, payload = 429, _errors(DEFAULT_MESSAGES[429])
        if status is not None:
            sg._record(RequestRecord(status, 0, False, time.time()))
            self._json(status, payload, limits)
            return
        assert body is not None
        message_id = secrets.token_urlsafe(16)[:22]
        entries = sg._entries(body, message_id)
        stored = body if sg.record_bodies else None
        if action.drop:
            sg._record(RequestRecord(None, len(entries), action.accepted, time.time(), stored),
                       entries if action.accepted else None)
            self.close_connection = True
            return
        sg._record(RequestRecord(200 if _sandbox(body) else 202, len(entries), True,
                                 time.time(), stored), entries)
        if action.delay and sg._stopping.wait(action.delay):
            self.close_connection = True
            return
        self._reply(200 if _sandbox(body) else 202, b"", {**limits, "X-Message-Id": message_id})

    def _read_body(self) -> tuple[bytes | None, bool]:
        """The request body; past 30 MB it is read and thrown away (413 comes next)."""
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._json(411, _errors("Content-Length is required"))
            self.close_connection = True
            return None, False
        if length <= MAX_BODY_BYTES:
            return self.rfile.read(length), False
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)
        return b"", True

    def _check(self, raw: bytes, too_large: bool
               ) -> tuple[int | None, dict[str, Any], dict[str, Any] | None]:
        """Auth, size and the v3 rules: (error status, error body, parsed request)."""
        if self.path.split("?")[0].rstrip("/") != "/v3/mail/send":
            return 404, _errors("not found"), None
        auth_status = self._auth_status()
        if auth_status is not None:
            return auth_status, _errors(DEFAULT_MESSAGES[auth_status]), None
        if too_large:
            return 413, _errors("The JSON payload you have included in your request is too "
                                "large. Please limit your requests to 30MB."), None
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, _errors("Bad Request", field=None), None
        errors = validate(body)
        if errors:
            return 400, {"errors": errors}, None
        return None, {}, body

    def _auth_status(self) -> int | None:
        """401 for a missing or wrong key, 403 for a forbidden one, None when it is good."""
        sg = self.server.sg
        auth = self.headers.get("Authorization", "")
        key = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if key and key in sg.forbidden_keys:
            return 403
        if not key or (sg.api_key is not None and key != sg.api_key):
            return 401
        return None

    def _json(self, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        self._reply(status, json.dumps(payload).encode(), headers,
                    content_type="application/json")

    def _reply(self, status: int, data: bytes, headers: dict[str, str] | None = None,
               content_type: str = "") -> None:
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up waiting


def _errors(message: str, field: str | None = None) -> dict[str, Any]:
    return {"errors": [{"message": message, "field": field, "help": None}]}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a local SendGrid-compatible server.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--rate-limit", type=int, default=10_000, help="requests per second")
    args = parser.parse_args()
    server = SendGridServer(port=args.port, latency=args.latency, rate_limit=args.rate_limit)
    with server:
        print(server.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
