"""Keeps messages in a process-wide list: for tests and for ``flask course rehearse``."""

from __future__ import annotations

from email.message import EmailMessage
from typing import ClassVar

from . import Recipient, Result, Template, personalize


class MemoryBackend:
    outbox: ClassVar[list[EmailMessage]] = []

    def send_batch(self, template: Template, recipients: list[Recipient]) -> list[Result]:
        results = []
        for recipient in recipients:
            msg = personalize(template, recipient)
            self.outbox.append(msg)
            results.append(Result(ok=True, message_id=str(msg["Message-ID"]).strip("<>")))
        return results
