"""SendGrid's Event Webhook, played by the local SendGrid server: signed, late, batched, twice.

SendGrid does not post an event the moment it happens: it gathers events for a while and
posts them in batches, signs each post (ECDSA P-256 over the timestamp header and the
body), retries a post that was not answered 2xx, and now and then posts an event again.
:class:`EventPoster` does the same with the events :meth:`SendGridServer.take_events`
hands over, so the app's webhook, and what it settles, are tested as in production.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def new_key() -> tuple[str, str]:
    """A signing key pair: (private key PEM, public key as SendGrid shows it: base64 DER)."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


def signed_headers(private_pem: str, body: bytes, at: int | None = None) -> dict[str, str]:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    stamp = str(int(time.time()) if at is None else at)
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: stamp,
            "Content-Type": "application/json"}


class EventPoster:
    """Posts the server's events to ``url`` from a thread, as SendGrid would.

    Events wait ``delay`` seconds (a random range) before they are posted, go in batches
    of at most ``batch``, and a ``twice`` share of them is posted again a little later.
    A post that fails is tried again after ``retry`` seconds, whatever the failure.
    """

    def __init__(self, take: Callable[[], list[dict[str, Any]]], url: str, private_pem: str,
                 *, delay: tuple[float, float] = (0.5, 2.0), batch: int = 2000,
                 twice: float = 0.05, retry: float = 1.0, seed: int | None = None):
        self.take, self.url, self.private_pem = take, url, private_pem
        self.delay, self.batch, self.twice, self.retry = delay, batch, twice, retry
        self.rng = random.Random(seed)
        self.pending: list[tuple[float, list[dict[str, Any]]]] = []
        self.posted = self.repeated = self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> EventPoster:
        self._thread.start()
        return self

    def stop(self, flush: bool = True, wait: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout=wait)
        if flush:
            self._gather(time.monotonic())
            self._post_due(float("inf"))

    def idle(self) -> bool:
        """Nothing waiting to be posted (as far as this poster knows)."""
        return not self.pending

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            self._gather(now)
            self._post_due(now)

    def _gather(self, now: float) -> None:
        events = self.take()
        if not events:
            return
        self.pending.append((now + self.rng.uniform(*self.delay), events))
        again = [e for e in events if self.rng.random() < self.twice]
        if again:
            self.repeated += len(again)
            self.pending.append((now + self.delay[1] + self.rng.uniform(0.5, 2.0), again))

    def _post_due(self, now: float) -> None:
        due = [events for at, events in self.pending if at <= now]
        self.pending = [(at, events) for at, events in self.pending if at > now]
        flat = [e for events in due for e in events]
        for start in range(0, len(flat), self.batch):
            chunk = flat[start:start + self.batch]
            if not self._post(chunk):
                self.failures += 1
                self.pending.append((now + self.retry, chunk))

    def _post(self, events: list[dict[str, Any]]) -> bool:
        body = json.dumps(events).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers=signed_headers(self.private_pem, body))
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                ok = 200 <= response.status < 300
        except (urllib.error.URLError, OSError):
            return False
        if ok:
            self.posted += len(events)
        return ok
