"""Who sends the course, from ``course.yml``: the author, a postal address, a privacy page.

Readers trust a course when they can see who writes it, and the law asks for some of it:
CAN-SPAM wants a valid postal address in every commercial email, and Gmail and Yahoo
expect a visible way out. These fields are shown on the landing page and in every email's
footer. A missing address is allowed on a laptop and refused in production. Problems are
``file:line: problem`` lines, like every other course check (``course/lessons.py``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The tool's name belongs in no From line: readers signed up for a course, not software.
TOOL_NAME = "minicourse"
NAME_MAX = 80
BIO_MAX = 200
ADDRESS_MAX = 300
ADDRESS_MAX_LINES = 6
# Small enough for an email footer fetched by every reader's mail app.
PHOTO_MAX_BYTES = 300 * 1024
# Formats every mail client shows (no WebP for Outlook, no SVG anywhere), each with the
# bytes its files start with, so a renamed file cannot be served under a false type.
PHOTO_TYPES: dict[str, tuple[tuple[bytes, ...], str]] = {
    ".png": ((b"\x89PNG\r\n\x1a\n",), "image/png"),
    ".jpg": ((b"\xff\xd8\xff",), "image/jpeg"),
    ".jpeg": ((b"\xff\xd8\xff",), "image/jpeg"),
    ".gif": ((b"GIF87a", b"GIF89a"), "image/gif"),
}
AUTHOR_KEYS = ("name", "bio", "photo")
PHOTO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Author:
    """The person behind the course. ``photo`` is a file in the course folder, or ""."""

    name: str
    bio: str
    photo: str = ""
    photo_path: str = ""
    photo_type: str = ""
    # A digest of the photo's bytes: its URL changes when the picture does.
    photo_version: str = ""

    @property
    def photo_url_path(self) -> str:
        return f"/author/photo?v={self.photo_version}" if self.photo else ""


def nested_key_lines(text: str, parent: str, first_line: int) -> dict[str, int]:
    """The line of each key written in block style under top-level ``parent:``."""
    found: dict[str, int] = {}
    inside = False
    for offset, line in enumerate(text.splitlines()):
        if re.match(rf"^{re.escape(parent)}\s*:", line):
            inside = True
            continue
        if inside and line.strip() and not line[0].isspace() and not line.startswith("#"):
            break  # the next top-level key
        m = re.match(r"^\s+([A-Za-z_][\w-]*)\s*:", line) if inside else None
        if m:
            found.setdefault(m.group(1), first_line + offset)
    return found


def _one_line(value: Any, label: str, limit: int, where: str, problems: list[str]) -> str:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: {label} must be non-empty text")
        return ""
    value = value.strip()
    if "\n" in value or "\r" in value:
        problems.append(f"{where}: {label} must be one line")
    elif len(value) > limit:
        problems.append(f"{where}: {label} is {len(value)} characters; keep it to {limit}")
    return value


def parse_photo(value: Any, root: Path, where: str,
                problems: list[str]) -> tuple[str, str, str, str]:
    """(file name, absolute path, MIME type, version) of a valid photo, or "" x 4."""
    none = ("", "", "", "")
    if value is None or value == "":
        return none
    if not isinstance(value, str) or not PHOTO_NAME_RE.match(value):
        problems.append(f"{where}: author photo must be a file name in the course folder, "
                        f"such as author.jpg (got {value!r})")
        return none
    suffix = Path(value).suffix.lower()
    if suffix not in PHOTO_TYPES:
        problems.append(f"{where}: author photo {value!r} must be a .jpg, .png or .gif "
                        "(the formats every mail client shows)")
        return none
    path = root / value
    if not path.is_file():
        problems.append(f"{where}: author photo {value!r} is not in {root}")
        return none
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(f"{where}: author photo {value!r} cannot be read ({exc.strerror})")
        return none
    if len(data) > PHOTO_MAX_BYTES:
        problems.append(f"{where}: author photo {value!r} is {len(data) // 1024} KB; keep it "
                        f"under {PHOTO_MAX_BYTES // 1024} KB (every reader's mail app loads it)")
        return none
    signatures, mime = PHOTO_TYPES[suffix]
    if not data.startswith(signatures):
        problems.append(f"{where}: author photo {value!r} is not a {suffix[1:]} image")
        return none
    return value, str(path.resolve()), mime, hashlib.sha256(data).hexdigest()[:12]


def parse_author(data: dict[str, Any], text: str, root: Path, display: str,
                 line: int, problems: list[str]) -> Author | None:
    value = data.get("author")
    if not isinstance(value, dict):
        problems.append(f"{display}:{line}: author must be a block with name, bio and "
                        "(optionally) photo: who writes the course")
        return None
    lines = nested_key_lines(text, "author", 1)
    for key in value:
        if key not in AUTHOR_KEYS:
            problems.append(f"{display}:{lines.get(str(key), line)}: author has an unknown "
                            f"key {key!r} (use {', '.join(AUTHOR_KEYS)})")
    name = _one_line(value.get("name"), "author name", NAME_MAX,
                     f"{display}:{lines.get('name', line)}", problems)
    bio = _one_line(value.get("bio"), "author bio", BIO_MAX,
                    f"{display}:{lines.get('bio', line)}", problems)
    photo = parse_photo(value.get("photo"), root, f"{display}:{lines.get('photo', line)}",
                        problems)
    return Author(name, bio, *photo)


def parse_postal_address(data: dict[str, Any], display: str, line: int, production: bool,
                         problems: list[str]) -> str:
    """The address, its lines joined by ", " (it is shown on one line in footers)."""
    value = data.get("postal_address")
    if value is None or value == "":
        if production:
            problems.append(
                f"{display}:1: postal_address is required in production (MINICOURSE_ENV="
                "production): CAN-SPAM asks for a valid postal address in every email"
            )
        return ""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{display}:{line}: postal_address must be text")
        return ""
    parts = [part.strip().rstrip(",") for part in value.strip().splitlines() if part.strip()]
    joined = ", ".join(parts)
    if len(parts) > ADDRESS_MAX_LINES or len(joined) > ADDRESS_MAX:
        problems.append(f"{display}:{line}: postal_address is too long (at most "
                        f"{ADDRESS_MAX_LINES} lines, {ADDRESS_MAX} characters)")
    return joined


def parse_privacy_url(data: dict[str, Any], display: str, line: int,
                      problems: list[str]) -> str:
    """Your own privacy policy's address; "" means the built-in page at /privacy."""
    value = data.get("privacy_url")
    if value is None or value == "":
        return ""
    parts = urlsplit(value) if isinstance(value, str) else None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.netloc
            or any(c.isspace() for c in value)):
        problems.append(f"{display}:{line}: privacy_url must be a full https:// address "
                        "(or leave it out to use the built-in privacy page)")
        return ""
    return str(value)


def check_sender_name(sender_name: str, display: str, line: int, problems: list[str]) -> None:
    if TOOL_NAME in sender_name.lower():
        problems.append(f"{display}:{line}: sender_name must not carry the tool's name "
                        "(Minicourse): readers signed up for your course, so use its name "
                        "or yours")


def parse_identity(data: dict[str, Any], text: str, lines: dict[str, int], root: Path,
                   display: str, production: bool, problems: list[str]) -> dict[str, Any]:
    """The course file's identity fields, as keyword arguments for ``Course``."""
    if "author" not in data:
        problems.append(f"{display}:1: missing 'author' (name, bio and optionally a photo)")
        author = None
    else:
        author = parse_author(data, text, root, display, lines.get("author", 1), problems)
    return {
        "author": author,
        "postal_address": parse_postal_address(
            data, display, lines.get("postal_address", 1), production, problems),
        "privacy_url": parse_privacy_url(data, display, lines.get("privacy_url", 1), problems),
    }
