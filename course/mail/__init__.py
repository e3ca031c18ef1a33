"""Mail backends: one interface, a batch of recipients of the same message per call.

A batch is one :class:`Template` (subject, HTML and text with placeholders) and a list of
:class:`Recipient` (their substitutions, headers and ``custom_args``). SendGrid sends a
batch in one API call with per-recipient substitutions; the outbox, SMTP and memory
backends fill the placeholders themselves with :func:`substitute`, one message per
recipient. The result is the same either way because the renderer (``course.render``)
makes placeholders that occur nowhere else: not in the content, not in any value, not
overlapping one another, so the order and number of passes cannot change the outcome.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from functools import lru_cache
from typing import Any, Protocol

from .errors import AuthError, MailError, PermanentError, TransientError, UnknownOutcomeError

__all__ = [
    "AuthError", "MailError", "PermanentError", "TransientError", "UnknownOutcomeError",
    "Recipient", "Result", "Template", "get_backend", "one_line", "personalize", "substitute",
    "uses_any",
]


@dataclass(frozen=True)
class Template:
    subject: str
    html: str
    text: str
    from_email: str
    from_name: str = ""
    reply_to: str = ""
    categories: tuple[str, ...] = ()


@dataclass
class Recipient:
    email: str
    name: str = ""
    substitutions: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    custom_args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """What happened to one recipient: sent (with the provider's id) or failed."""

    ok: bool
    message_id: str = ""
    error: str = ""


class MailBackend(Protocol):
    def send_batch(self, template: Template, recipients: list[Recipient]) -> list[Result]: ...


def one_line(value: str) -> str:
    """Header-safe: no CR/LF may ever reach an email header."""
    if value.isprintable() and "  " not in value and value[:1] != " " and value[-1:] != " ":
        # The common case, checked in C: every whitespace character but the plain space
        # (CR, LF, tabs, Unicode line and paragraph separators) is unprintable, so there
        # is nothing to fold.
        return value
    return " ".join(value.replace("\r", " ").replace("\n", " ").split())


@lru_cache(maxsize=128)
def _keys_pattern(keys: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first, so a key that begins another never wins at the same position.
    return re.compile("|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True)))


def substitute(text: str, substitutions: dict[str, str]) -> str:
    """Fill the placeholders in one pass: only the keys given are looked for (not anything
    that looks like a placeholder, so the text around one cannot swallow it), and values
    are never scanned again."""
    if not substitutions:
        return text
    pattern = _keys_pattern(tuple(substitutions))
    return pattern.sub(lambda m: substitutions[m.group(0)], text)


def uses_any(text: str, keys: Iterable[str]) -> bool:
    """Whether any of the placeholders ``keys`` occurs in ``text``."""
    return any(key in text for key in keys)


def personalize(template: Template, recipient: Recipient) -> EmailMessage:
    """One complete MIME message (text + HTML alternative) for one recipient."""
    subs = recipient.substitutions
    msg = EmailMessage()
    msg["Subject"] = one_line(substitute(template.subject, subs))
    msg["From"] = Address(display_name=one_line(template.from_name), addr_spec=template.from_email)
    msg["To"] = Address(display_name=one_line(recipient.name), addr_spec=recipient.email)
    if template.reply_to:
        msg["Reply-To"] = template.reply_to
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    domain = template.from_email.rpartition("@")[2] or "localhost"
    msg["Message-ID"] = make_msgid(domain=domain)
    for name, value in recipient.headers.items():
        msg[name] = one_line(value)
    for key, value in recipient.custom_args.items():
        msg[f"X-Minicourse-{key.replace('_', '-').title()}"] = one_line(value)
    msg.set_content(substitute(template.text, subs))
    msg.add_alternative(substitute(template.html, subs), subtype="html")
    return msg


def get_backend(config: dict[str, Any]) -> MailBackend:
    """The backend named by ``MAIL_BACKEND``, built from the app config."""
    name = config["MAIL_BACKEND"]
    if name == "outbox":
        from .outbox import OutboxBackend

        return OutboxBackend(config["OUTBOX_DIR"])
    if name == "memory":
        from .memory import MemoryBackend

        return MemoryBackend()
    if name == "smtp":
        from .smtp import SMTPBackend

        return SMTPBackend(
            host=config["SMTP_HOST"],
            port=config["SMTP_PORT"],
            username=config["SMTP_USERNAME"],
            password=config["SMTP_PASSWORD"],
            starttls=config["SMTP_STARTTLS"],
        )
    if name == "sendgrid":
        from .sendgrid import SendGridBackend

        return SendGridBackend(
            api_key=config["SENDGRID_API_KEY"],
            host=config["SENDGRID_API_HOST"],
            sandbox=bool(config.get("SENDGRID_SANDBOX", False)),
            timeout=float(config.get("SENDGRID_TIMEOUT", 10.0)),
            max_retries=int(config.get("SENDGRID_MAX_RETRIES", 4)),
        )
    raise ValueError(f"unknown MAIL_BACKEND {name!r}")
