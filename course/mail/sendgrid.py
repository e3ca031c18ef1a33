"""SendGrid v3 ``mail/send``: one API call per batch of up to 1,000 recipients.

The lesson goes once as the shared content; each recipient is a personalization with its
own substitutions (greeting, signed links), List-Unsubscribe headers and the delivery id
in ``custom_args``, which SendGrid echoes back in webhook events. Open and click tracking
are switched off: we sign and count those ourselves.

Retries are limited to what cannot double-send: 429 and 5xx answers and failures before
the request was fully sent, and only short ones in the job (up to ``max_wait``); a longer
wait is the pipeline's to take, for every worker at once. Once the request was written
and no answer comes back, the outcome is unconfirmed and reported as such, never retried
(see :mod:`course.mail.errors`).

Where the line falls: the client (``python_http_client``) sends through ``urllib``, whose
``AbstractHTTPHandler.do_open`` connects (DNS, TCP, TLS) and writes the whole request in
``HTTPConnection.request`` and wraps any ``OSError`` from it in ``URLError``; only then
does it read the answer, whose failures (reset, close, read timeout) come out unwrapped.
So a ``URLError`` means SendGrid cannot have the whole request, and anything else after
the write may have been accepted. ``on_request`` tells the caller's send journal just
before each attempt (``"write"``) and after each one known not to be taken
(``"not_accepted"``), so a worker killed mid-wait leaves a record of what it never sent.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import re
import time
import urllib.error
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from . import Recipient, Result, Template, one_line, substitute, uses_any
from .errors import AuthError, MailError, PermanentError, TransientError, UnknownOutcomeError

log = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
MAX_PERSONALIZATIONS = 1000  # SendGrid: at most 1,000 recipients per request
MAX_CATEGORIES = 10
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ISOLATION_ROUNDS = 3  # resends after a 400 that blames single personalizations
BLAME_RE = re.compile(r"^personalizations\.(\d+)(?:\.|$)")


class SendGridBackend:
    """Sends batches through SendGrid; ``sleep`` is injectable so tests do not wait."""

    max_batch = MAX_PERSONALIZATIONS

    def __init__(
        self,
        api_key: str,
        host: str = "https://api.sendgrid.com",
        sandbox: bool = False,
        timeout: float = 10.0,
        max_retries: int = 4,
        categories: tuple[str, ...] = (),
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_wait: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.client = SendGridAPIClient(api_key=api_key, host=host.rstrip("/"))
        self.sandbox, self.timeout, self.max_retries = sandbox, timeout, max_retries
        self.categories = tuple(categories)
        self.backoff_base, self.backoff_cap, self.max_wait = backoff_base, backoff_cap, max_wait
        self.sleep = sleep
        self.rng = rng or random.Random()
        # Told "write" just before each attempt and "not_accepted" after one that SendGrid
        # refused or that never fully left (course/send_requests.py keeps the record).
        self.on_request: Callable[[str], None] | None = None

    def _tell(self, what: str) -> None:
        if self.on_request is not None:
            self.on_request(what)

    # -- the batch ------------------------------------------------------------------------

    def send_batch(self, template: Template, recipients: list[Recipient]) -> list[Result]:
        """One request per 1,000 recipients; on error ``exc.results`` says who was settled."""
        results: list[Result | None] = [None] * len(recipients)
        for start in range(0, len(recipients), self.max_batch):
            chunk = recipients[start:start + self.max_batch]
            try:
                results[start:start + len(chunk)] = self._send(template, chunk)
            except MailError as exc:
                results[start:start + len(chunk)] = exc.results or [None] * len(chunk)
                exc.results = results
                raise
        return [r for r in results if r is not None]

    def _send(self, template: Template, recipients: list[Recipient],
              depth: int = 0) -> list[Result | None]:
        """One request; on a 413 send halves, on a 400 that blames recipients drop them."""
        try:
            message_id = self._post(self.body(template, recipients))
        except PermanentError as exc:
            if exc.status == 413 and len(recipients) > 1:
                return self._send_halves(template, recipients, depth)
            blamed = blamed_recipients(exc.errors, len(recipients))
            if not blamed or depth >= ISOLATION_ROUNDS:
                raise
            return self._send_without(template, recipients, blamed, depth)
        return [Result(ok=True, message_id=message_id) for _ in recipients]

    def _send_halves(self, template: Template, recipients: list[Recipient],
                     depth: int) -> list[Result | None]:
        mid = len(recipients) // 2
        first = self._send(template, recipients[:mid], depth)
        try:
            return first + self._send(template, recipients[mid:], depth)
        except MailError as exc:
            exc.results = first + (exc.results or [None] * (len(recipients) - mid))
            raise

    def _send_without(self, template: Template, recipients: list[Recipient],
                      blamed: dict[int, str], depth: int) -> list[Result | None]:
        """Fail the recipients SendGrid named and send the others: one bad address
        must not sink the 999 good ones in its request."""
        out: list[Result | None] = [
            Result(ok=False, error=blamed[i]) if i in blamed else None
            for i in range(len(recipients))
        ]
        keep = [i for i in range(len(recipients)) if i not in blamed]
        if not keep:
            return out
        try:
            sent = self._send(template, [recipients[i] for i in keep], depth + 1)
        except MailError as exc:
            for i, res in zip(keep, exc.results, strict=False):
                out[i] = res
            exc.results = out
            raise
        for i, res in zip(keep, sent, strict=True):
            out[i] = res
        return out

    # -- the request ----------------------------------------------------------------------

    def body(self, template: Template, recipients: list[Recipient]) -> dict[str, Any]:
        """The v3 mail/send JSON for one request."""
        subject_varies = any(uses_any(template.subject, r.substitutions) for r in recipients)
        body: dict[str, Any] = {
            "from": address(template.from_email, template.from_name),
            "subject": one_line(template.subject),
            "content": [
                {"type": kind, "value": value}
                for kind, value in (("text/plain", template.text), ("text/html", template.html))
                if value
            ],
            "personalizations": [personalization(template, r, subject_varies)
                                 for r in recipients],
            "tracking_settings": {
                "click_tracking": {"enable": False, "enable_text": False},
                "open_tracking": {"enable": False},
                "subscription_tracking": {"enable": False},
            },
        }
        categories = list(dict.fromkeys(c[:255] for c in template.categories + self.categories))
        if categories:
            body["categories"] = categories[:MAX_CATEGORIES]
        if template.reply_to:
            body["reply_to"] = {"email": one_line(template.reply_to)}
        if self.sandbox:
            body["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return body

    def _post(self, body: dict[str, Any]) -> str:
        """POST with retries; returns SendGrid's ``X-Message-Id``."""
        # Encoded here with orjson (a 1,000-recipient body in ~1 ms, not ~6 ms with the
        # json module); a Content-Type other than the bare "application/json" makes the
        # client send the string as it is instead of encoding the body again.
        data = orjson.dumps(body).decode("utf-8")
        attempt = 0
        while True:
            retry_after: float | None = None
            self._tell("write")
            try:
                response = self.client.client.mail.send.post(
                    request_body=data, request_headers=JSON_HEADERS, timeout=self.timeout
                )
                return str(response.headers.get("X-Message-Id", ""))
            except HTTPError as exc:
                self._tell("not_accepted")
                status, text, errors = exc.status_code, *error_text(exc.body)
                if status in (401, 403):
                    raise AuthError(status, text) from exc
                if status not in RETRY_STATUSES and status < 500:
                    raise PermanentError(status, text, errors=errors) from exc
                retry_after = retry_wait(status, exc.headers)
                reason = f"SendGrid answered {status}: {text}"
            except urllib.error.URLError as exc:
                # Raised while connecting (refused, DNS, TLS, connect timeout) or writing:
                # SendGrid never had the whole request.
                self._tell("not_accepted")
                reason = f"cannot reach SendGrid: {exc.reason}"
            except (OSError, http.client.HTTPException) as exc:
                # Raised after the request was written (read timeout, reset, closed).
                raise UnknownOutcomeError(
                    f"no answer from SendGrid after sending ({type(exc).__name__}: {exc}); "
                    "it may have been accepted"
                ) from exc
            attempt += 1
            if attempt > self.max_retries:
                raise TransientError(f"{reason} (gave up after {attempt} attempts)",
                                     retry_after=retry_after)
            wait = retry_after if retry_after else self.backoff(attempt)
            if wait > self.max_wait:
                raise TransientError(f"{reason} (retry in {wait:.0f} s)", retry_after=wait)
            log.warning("%s; retry %d/%d in %.2f s", reason, attempt, self.max_retries, wait)
            self.sleep(wait)

    def check_credentials(self) -> bool:
        """True when SendGrid accepts our key (``GET /v3/scopes``: sends nothing)."""
        try:
            self.client.client.scopes.get(timeout=self.timeout)
        except HTTPError as exc:
            if exc.status_code in (401, 403):
                return False
            raise TransientError(f"SendGrid answered {exc.status_code}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"cannot reach SendGrid: {exc}") from exc
        return True

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter, so many workers do not retry in step."""
        return self.rng.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))


def address(email: str, name: str = "") -> dict[str, str]:
    """An email object; SendGrid refuses ``;`` and ``,`` in names, and no CR/LF may pass."""
    clean = one_line(name.replace(";", " ").replace(",", " "))
    return {"email": one_line(email), "name": clean} if clean else {"email": one_line(email)}


def personalization(template: Template, recipient: Recipient,
                    subject_varies: bool | None = None) -> dict[str, Any]:
    """One recipient's part of the request; ``subject_varies`` (whether the subject has
    placeholders) is worked out once per request by :meth:`SendGridBackend.body`.

    SendGrid fills the substitutions into the content and subject itself; the placeholders
    ``course.render`` makes occur nowhere but where they belong, so it comes out exactly as
    :func:`course.mail.substitute` fills it for the other backends."""
    subs = recipient.substitutions
    email, name = recipient.email, recipient.name
    p: dict[str, Any] = {"to": [address(email, name)]}
    if subs:
        p["substitutions"] = subs
    if subject_varies is None:
        subject_varies = uses_any(template.subject, subs)
    if subject_varies:
        # A substituted value must not smuggle a line break into the Subject header.
        p["subject"] = one_line(substitute(template.subject, subs))
    if recipient.headers:
        p["headers"] = {one_line(k): one_line(v) for k, v in recipient.headers.items()}
    if recipient.custom_args:
        p["custom_args"] = {str(k): str(v) for k, v in recipient.custom_args.items()}
    return p


def error_text(body: bytes | str | None) -> tuple[str, list[dict[str, Any]]]:
    """SendGrid's ``errors[].message`` joined, and the error list itself."""
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        errors = json.loads(raw).get("errors") or []
        errors = [e for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        errors = []
    messages = [str(e.get("message") or "") for e in errors if e.get("message")]
    return ("; ".join(messages) or raw.strip()[:500] or "no error text"), errors


def blamed_recipients(errors: list[dict[str, Any]], count: int) -> dict[int, str]:
    """Recipients a 400 names (``personalizations.N...``), if it names only recipients."""
    blamed: dict[int, str] = {}
    for error in errors:
        m = BLAME_RE.match(str(error.get("field") or ""))
        if m is None or int(m.group(1)) >= count:
            return {}
        index = int(m.group(1))
        text = str(error.get("message") or "refused by SendGrid")
        blamed[index] = f"{blamed[index]}; {text}" if index in blamed else text
    return blamed


def retry_wait(status: int, headers: Mapping[str, str] | None,
               now: float | None = None) -> float | None:
    """Seconds until SendGrid lets us in again, when it says: ``Retry-After``, or for a 429
    ``X-RateLimit-Reset`` (epoch seconds; on other answers it only describes the window)."""
    if headers is None:
        return None
    now = time.time() if now is None else now
    names = ("Retry-After", "X-RateLimit-Reset") if status == 429 else ("Retry-After",)
    for name in names:
        value = headers.get(name)
        if not value:
            continue
        try:
            seconds = float(value) if name == "Retry-After" else float(value) - now
        except ValueError:
            continue
        return max(seconds, 0.0)
    return None
