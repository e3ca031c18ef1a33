"""Small builders shared by tests (rows, not mocks)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from course.extensions import db
from course.models import SignupRequest, Status, Subscriber
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


def add_signup_request(sub: Subscriber, *, state: str = "owed", name: str | None = None,
                       sent: bool = True) -> SignupRequest:
    """A signup of ``sub`` as the form makes one (with its own nonce), its confirmation sent."""
    from course.signup import new_nonce

    now = utcnow()
    req = SignupRequest(email=sub.email, subscriber_id=sub.id, nonce=new_nonce(), state=state,
                        name=sub.name if name is None else name, timezone=sub.timezone,
                        consent_at=now, consent_version="test", created_at=now,
                        queued_at=now, sent_at=now if sent else None, attempts=int(sent))
    db.session.add(req)
    db.session.commit()
    return req


def confirm_path(req: SignupRequest) -> str:
    """The path of ``req``'s confirmation link (needs an app context)."""
    from course.signup import confirmation_token

    return f"/confirm/{confirmation_token(req)}"


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


SHIPPED_COURSE = (Path(__file__).resolve().parent.parent / "lessons"
                  / "networking-for-career-changers")


def copy_shipped_course(tmp_path: Path) -> Path:
    """A copy of the shipped course, alone in a catalog (``tmp_path/lessons/<slug>/``).

    Returns the course folder; the catalog (``LESSONS_DIR``) is its parent.
    """
    target = tmp_path / "lessons" / SHIPPED_COURSE.name
    shutil.copytree(SHIPPED_COURSE, target)
    return target
