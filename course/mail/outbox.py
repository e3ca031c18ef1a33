"""Writes each message as an ``.eml`` file: the newcomer's default, viewable in the admin."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from . import Recipient, Result, Template, personalize


class OutboxBackend:
    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)

    def send_batch(self, template: Template, recipients: list[Recipient]) -> list[Result]:
        self.directory.mkdir(parents=True, exist_ok=True)
        results = []
        for recipient in recipients:
            msg = personalize(template, recipient)
            message_id = uuid.uuid4().hex
            # Write then rename, so a reader never sees half a file.
            tmp = self.directory / f".{message_id}.tmp"
            tmp.write_bytes(bytes(msg))
            tmp.rename(self.directory / f"{message_id}.eml")
            results.append(Result(ok=True, message_id=message_id))
        return results
