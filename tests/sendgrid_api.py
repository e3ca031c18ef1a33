"""The SendGrid v3 ``mail/send`` API as data: the rules a request must follow, and the
ledger entry an accepted request leaves for each recipient.

Sources: the Mail Send reference and its "Limitations" page (1,000 recipients per
request, 10,000 bytes of substitutions per personalization, custom_args under 10,000
bytes, no ``;`` or ``,`` in recipient names, 30 MB per request, the reserved headers).
Errors have SendGrid's shape, ``{"message", "field", "help"}``, and a field such as
``personalizations.3.to.0.email`` names the offending recipient, as SendGrid does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_BODY_BYTES = 30 * 1024 * 1024
MAX_RECIPIENTS = 1000
MAX_SUBSTITUTION_BYTES = 10_000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_CATEGORIES = 10
RESERVED_HEADERS = frozenset({
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
})
EMAIL_RE = re.compile(r"^[^@\s<>,;\"()\[\]]+@[^@\s<>,;\"()\[\]]+\.[^@\s<>,;\"()\[\]]+$")

SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template with "
    "a subject defined or if every personalization has a subject defined."
)

Error = dict[str, Any]


def error(message: str, field: str | None = None) -> Error:
    return {"message": message, "field": field, "help": None}


def _size(mapping: dict[Any, Any]) -> int:
    return sum(len(str(k).encode()) + len(str(v).encode()) for k, v in mapping.items())


def _email_errors(obj: Any, field: str, *, name_rule: bool = False) -> list[Error]:
    if not isinstance(obj, dict) or not isinstance(obj.get("email"), str):
        return [error("The email object requires an email parameter.", field)]
    out = []
    if not EMAIL_RE.match(obj["email"]):
        out.append(error("Does not contain a valid address.", f"{field}.email"))
    name = obj.get("name")
    if name is not None and not isinstance(name, str):
        out.append(error("The name must be a string.", f"{field}.name"))
    elif name_rule and name and (";" in name or "," in name):
        out.append(error("The name cannot include either the ; or , characters.",
                         f"{field}.name"))
    return out


def _string_map_errors(value: Any, field: str, what: str) -> list[Error]:
    if value is None:
        return []
    if not isinstance(value, dict):
        return [error(f"The {what} must be an object.", field)]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return [error(f"The {what} keys and values must be strings.", field)]
    return []


def _header_errors(headers: Any, field: str) -> list[Error]:
    out = _string_map_errors(headers, field, "headers")
    if out or not headers:
        return out
    for name in headers:
        if name.lower() in RESERVED_HEADERS:
            out.append(error(f"The header {name} is reserved and may not be set.", field))
    return out


def _personalization_errors(p: Any, i: int, seen: set[str], top_subject: bool,
                            top_args: int) -> tuple[list[Error], int]:
    """Errors of personalization ``i``, and how many recipients it has."""
    field = f"personalizations.{i}"
    if not isinstance(p, dict):
        return [error("Each personalization must be an object.", field)], 0
    out: list[Error] = []
    count = 0
    to = p.get("to")
    if not isinstance(to, list) or not to:
        out.append(error("The to array is required for all personalization objects, and must "
                         "have at least one email object with a valid email address.",
                         f"{field}.to"))
    for kind in ("to", "cc", "bcc"):
        rcpts = p.get(kind)
        if rcpts is None:
            continue
        if not isinstance(rcpts, list):
            out.append(error(f"The {kind} field must be an array.", f"{field}.{kind}"))
            continue
        for j, rcpt in enumerate(rcpts):
            count += 1
            problems = _email_errors(rcpt, f"{field}.{kind}.{j}", name_rule=True)
            out.extend(problems)
            if problems:
                continue
            email = rcpt["email"].lower()
            if email in seen:
                out.append(error(
                    "Each email address in the personalization block should be unique between "
                    "to, cc, and bcc. We found the first duplicate instance of "
                    f"[{rcpt['email']}] in the {field}.{kind} field.", f"{field}.{kind}"))
            seen.add(email)
    subs = p.get("substitutions")
    sub_errors = _string_map_errors(subs, f"{field}.substitutions", "substitutions")
    out.extend(sub_errors)
    if not sub_errors and subs and _size(subs) > MAX_SUBSTITUTION_BYTES:
        out.append(error("The total size of your substitutions in a personalization may not "
                         f"exceed {MAX_SUBSTITUTION_BYTES} bytes.", f"{field}.substitutions"))
    args = p.get("custom_args")
    arg_errors = _string_map_errors(args, f"{field}.custom_args", "custom_args")
    out.extend(arg_errors)
    if not arg_errors and args and top_args + _size(args) >= MAX_CUSTOM_ARGS_BYTES:
        out.append(error("The total length of custom arguments must be less than "
                         f"{MAX_CUSTOM_ARGS_BYTES} bytes.", f"{field}.custom_args"))
    out.extend(_header_errors(p.get("headers"), f"{field}.headers"))
    subject = p.get("subject")
    if subject is not None and not isinstance(subject, str):
        out.append(error("The subject must be a string.", f"{field}.subject"))
    elif not top_subject and not subject:
        out.append(error(SUBJECT_REQUIRED, "subject"))
    return out, count


def _content_errors(content: Any) -> list[Error]:
    if not isinstance(content, list) or not content:
        return [error("Unless a valid template_id is provided, the content parameter is "
                      "required. There must be at least one defined content block.",
                      "content")]
    out = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            out.append(error("Each content block needs a type and a value.", f"content.{i}"))
        elif not isinstance(block.get("value"), str) or not block["value"]:
            out.append(error("The content value must be a string at least one character in "
                             "length.", f"content.{i}.value"))
    types = [b.get("type") for b in content if isinstance(b, dict)]
    if "text/plain" in types and types.index("text/plain") != 0:
        out.append(error("If present, text/plain must be first, followed by text/html.",
                         "content"))
    return out


def _settings_errors(body: dict[str, Any]) -> list[Error]:
    out = []
    sandbox = (body.get("mail_settings") or {}).get("sandbox_mode")
    if sandbox is not None and not isinstance((sandbox or {}).get("enable"), bool):
        out.append(error("The sandbox mode enable param should be a boolean value.",
                         "mail_settings.sandbox_mode.enable"))
    categories = body.get("categories")
    if categories is not None:
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            out.append(error("The categories must be an array of strings.", "categories"))
        elif len(categories) > MAX_CATEGORIES:
            out.append(error(f"You may not have more than {MAX_CATEGORIES} categories per "
                             "request.", "categories"))
        elif any(len(c) > 255 for c in categories):
            out.append(error("A category cannot have more than 255 characters.", "categories"))
    if body.get("reply_to") is not None:
        out.extend(_email_errors(body["reply_to"], "reply_to"))
    return out


def validate(body: Any) -> list[Error]:
    """Every rule the request breaks (an empty list: SendGrid would accept it)."""
    if not isinstance(body, dict):
        return [error("Bad Request")]
    out: list[Error] = []
    if not isinstance(body.get("from"), dict) or not body["from"].get("email"):
        out.append(error("The from object must be provided for every email send. It is an "
                         "object that requires the email parameter, but may also contain a "
                         "name parameter.", "from.email"))
    else:
        out.extend(_email_errors(body["from"], "from"))
    top_subject = isinstance(body.get("subject"), str) and bool(body["subject"])
    out.extend(_content_errors(body.get("content")))
    out.extend(_header_errors(body.get("headers"), "headers"))
    top_args = body.get("custom_args")
    top_arg_errors = _string_map_errors(top_args, "custom_args", "custom_args")
    out.extend(top_arg_errors)
    top_args_size = _size(top_args) if top_args and not top_arg_errors else 0
    out.extend(_settings_errors(body))
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        out.append(error("The personalizations field is required and must have at least one "
                         "personalization.", "personalizations"))
        return out
    if len(personalizations) > MAX_RECIPIENTS:
        out.append(error(f"The personalizations field is limited to {MAX_RECIPIENTS} "
                         "personalizations.", "personalizations"))
        return out
    seen: set[str] = set()
    total = 0
    subject_missing = False
    for i, p in enumerate(personalizations):
        problems, count = _personalization_errors(p, i, seen, top_subject, top_args_size)
        total += count
        for problem in problems:
            if problem["field"] == "subject":
                subject_missing = True
            else:
                out.append(problem)
    if subject_missing:
        out.append(error(SUBJECT_REQUIRED, "subject"))
    if total > MAX_RECIPIENTS:
        out.append(error(f"The total number of recipients must be no more than {MAX_RECIPIENTS}"
                         " (to, cc and bcc, across all personalizations).", "personalizations"))
    return out


@dataclass(slots=True)
class LedgerEntry:
    """One recipient of one accepted request, as SendGrid would send it."""

    email: str
    name: str
    message_id: str
    at: float
    sandbox: bool
    from_email: str
    categories: tuple[str, ...]
    custom_args: dict[str, str]
    headers: dict[str, str]
    substitutions: dict[str, str]
    raw_subject: str
    content: tuple[tuple[str, str], ...]  # shared by every entry of the request

    def _fill(self, text: str) -> str:
        if not self.substitutions:
            return text
        keys = sorted(self.substitutions, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(k) for k in keys))
        return pattern.sub(lambda m: self.substitutions[m.group(0)], text)

    @property
    def subject(self) -> str:
        return self._fill(self.raw_subject)

    def part(self, mime_type: str) -> str:
        return next((self._fill(v) for t, v in self.content if t == mime_type), "")

    @property
    def html(self) -> str:
        return self.part("text/html")

    @property
    def text(self) -> str:
        return self.part("text/plain")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One POST as the server saw it; ``status`` is None when it answered nothing."""

    status: int | None
    recipients: int
    accepted: bool
    at: float
    body: dict[str, Any] | None = None
