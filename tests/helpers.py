"""Small builders shared by tests (rows, not mocks)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from course.extensions import db
from course.models import Status, Subscriber
from course.timeutil import utcnow

ROOT = Path(__file__).resolve().parent.parent


def add_subscriber(email: str, *, status: str = Status.ACTIVE, timezone: str = "UTC",
                   name: str = "", next_send_at: datetime | None = None,
                   next_position: int = 1, **extra: Any) -> Subscriber:
    sub = Subscriber(email=email, name=name, timezone=timezone, status=status,
                     next_position=next_position,
                     next_send_at=next_send_at if next_send_at is not None else (
                         utcnow() if status == Status.ACTIVE else None),
                     consent_at=utcnow(), consent_version="test", **extra)
    db.session.add(sub)
    db.session.commit()
    return sub


def copy_working_tree(dest: Path) -> None:
    """What a clean clone of this work would hold: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the work tree is still listed
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
