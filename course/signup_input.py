"""What signup accepts: addresses and names, under the same rules at every way in (the
signup form, ``flask subscribers import``, the admin CLI).

Addresses are stored lower-cased with their domain in ASCII (IDNA), because that is what
every mail system takes; an address with non-ASCII letters before the @ is refused with a
clear message, because sending to it needs SMTPUTF8 end to end, which we cannot promise.
Names go into lessons' greetings, so they must look like names.
"""

from __future__ import annotations

import re
import unicodedata

from email_validator import EmailNotValidError, validate_email
from flask import current_app

# A first name, not a sentence: long enough for "Maria del Carmen", too short for a pitch.
NAME_MAX = 50
INVALID_ADDRESS = "Please enter a valid email address, like name@example.com."
NON_ASCII_LOCAL = (
    "Please use an address with only plain letters (a to z), digits and dots before the @: "
    "we can't send to accented or non-Latin letters there yet."
)
RESERVED_ADDRESS = (
    "That address is reserved for examples and tests and never receives email. "
    "Please enter your own address."
)
# RFC 2606 and RFC 6761 names that never receive mail. In development they are welcome
# (the README's examples use them); in production they are refused.
RESERVED_TLDS = ("test", "example", "invalid", "localhost")
RESERVED_DOMAINS = ("example.com", "example.net", "example.org")


class AddressError(ValueError):
    """An address that cannot be used; ``str()`` is the reason, written for people, and
    ``kind`` says which ("invalid", "non_ascii" or "reserved") for callers that word it
    their own way (the CSV import)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def reserved_domain(domain: str) -> bool:
    domain = domain.lower().rstrip(".")
    return domain.rsplit(".", 1)[-1] in RESERVED_TLDS or any(
        domain == d or domain.endswith("." + d) for d in RESERVED_DOMAINS)


def check_address(raw: str, *, check_deliverability: bool = False,
                  allow_test_domains: bool = False) -> str:
    """The canonical form of an address: lower-cased, its domain in ASCII (IDNA), or
    :class:`AddressError` saying why not.

    A Unicode domain becomes its ``xn--`` form, which every mail system takes. A local part
    (before the @) outside ASCII needs SMTPUTF8 end to end, which we cannot promise, so it
    is refused here with a clear message rather than accepted and never delivered.
    ``allow_test_domains`` accepts reserved names such as ``example.test`` (development);
    without it they are refused, ``example.com`` and its siblings included.
    """
    raw = (raw or "").strip()
    if not raw or len(raw) > 320 or any(c in raw for c in "\r\n\0"):
        raise AddressError(INVALID_ADDRESS, "invalid")
    local = raw.rpartition("@")[0]
    if local and not local.isascii():
        raise AddressError(NON_ASCII_LOCAL, "non_ascii")
    try:
        info = validate_email(raw, check_deliverability=check_deliverability,
                              test_environment=allow_test_domains, allow_smtputf8=False)
    except EmailNotValidError:
        if not allow_test_domains and reserved_domain(raw.rpartition("@")[2]):
            raise AddressError(RESERVED_ADDRESS, "reserved") from None
        raise AddressError(INVALID_ADDRESS, "invalid") from None
    address = (info.ascii_email or info.normalized).lower()
    if not allow_test_domains and reserved_domain(address.rpartition("@")[2]):
        raise AddressError(RESERVED_ADDRESS, "reserved")
    return address


def normalise_email(raw: str, *, check_deliverability: bool = False,
                    allow_test_domains: bool = False) -> str | None:
    """:func:`check_address` for callers that only need yes or no (admin accounts).

    Unlike a subscriber's, an admin's address may be at ``example.com``: it only signs in.
    """
    try:
        address = check_address(raw, check_deliverability=check_deliverability,
                                allow_test_domains=True)
    except AddressError:
        return None
    if not allow_test_domains and address.rpartition(".")[2] in RESERVED_TLDS:
        return None
    return address


def subscriber_address(raw: str) -> str:
    """A subscriber's address under this installation's rules: reserved test domains only
    outside production. Raises :class:`AddressError`. Needs an app context."""
    config = current_app.config
    return check_address(raw, check_deliverability=bool(config["EMAIL_CHECK_DELIVERABILITY"]),
                         allow_test_domains=config["MINICOURSE_ENV"] != "production")


def clean_name(raw: str | None) -> str:
    """Strip control and format characters (CR/LF included) and fold white space."""
    text = "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
        for c in (raw or "")
        if unicodedata.category(c) not in ("Cf", "Co", "Cs")
    )
    return " ".join(text.split())


# Something a mail client would make a link of: a scheme, "www.", an address, or a
# host name such as "pay-here.com" (a dot followed by two or more letters ending a word).
LINK_LIKE = re.compile(r"(?i)(://|\bwww\.|@|[\w-]\.[^\W\d_]{2,}\b)")


def name_problem(name: str) -> str | None:
    """Why a (cleaned) name cannot be used, or None. A name reaches lessons' greetings,
    so it must be a name: short, and without links a reader might follow."""
    if len(name) > NAME_MAX:
        return f"Please keep your name to {NAME_MAX} characters or fewer."
    if LINK_LIKE.search(name):
        return "Please enter just your name, without web or email addresses."
    return None
