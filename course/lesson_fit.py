"""Whether a lesson's per-recipient data fits in one SendGrid personalization.

SendGrid's v3 ``mail/send`` refuses a personalization with more than 100 substitutions or
more than 10,000 bytes of them, and custom arguments of 10,000 bytes or more (its API
reference, "personalizations"). A refused personalization is a lesson that never goes out,
so ``flask lessons check`` measures each lesson the way the sender builds it: the real
renderer, ``recipient_for`` and SendGrid request body, for the worst recipient there can
be (the longest name a subscriber can have, in the characters that take the most bytes,
the longest address and the largest ids).
"""

from __future__ import annotations

from dataclasses import dataclass

from .lessons import Course, Lesson
from .mail.sendgrid import personalization
from .models import Subscriber
from .render import recipient_for, render_lesson

MAX_SUBSTITUTIONS = 100
MAX_SUBSTITUTION_BYTES = 10_000  # keys and values, per personalization
MAX_CUSTOM_ARGS_BYTES = 10_000  # must stay below, per personalization
MAX_ID = 2**31 - 1  # ids are 32-bit integers


def worst_names() -> list[str]:
    """Names of the longest allowed length that weigh the most once substituted: four
    UTF-8 bytes a character, or a quote (one byte, six once HTML-escaped)."""
    length = Subscriber.__table__.c.name.type.length or 100  # type: ignore[attr-defined]
    return ["\U0001f600" * length, '"' * length]


def worst_address() -> str:
    length = Subscriber.__table__.c.email.type.length or 320  # type: ignore[attr-defined]
    domain = "@" + ".".join(["d" * 63] * 3) + ".example"
    return "a" * (length - len(domain)) + domain


def size(mapping: dict[str, str]) -> int:
    """SendGrid's measure: the UTF-8 bytes of every key and value."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in mapping.items())


@dataclass(frozen=True)
class Fit:
    """The worst case of one lesson's personalization."""

    substitutions: int
    substitution_bytes: int
    custom_args_bytes: int

    def problems(self) -> list[str]:
        out = []
        if self.substitutions > MAX_SUBSTITUTIONS:
            out.append(f"{self.substitutions} substitutions per recipient; SendGrid takes "
                       f"at most {MAX_SUBSTITUTIONS}")
        if self.substitution_bytes > MAX_SUBSTITUTION_BYTES:
            out.append(f"up to {self.substitution_bytes:,} bytes of substitutions per "
                       f"recipient; SendGrid takes at most {MAX_SUBSTITUTION_BYTES:,}")
        if self.custom_args_bytes >= MAX_CUSTOM_ARGS_BYTES:
            out.append(f"up to {self.custom_args_bytes:,} bytes of custom_args per recipient; "
                       f"SendGrid takes less than {MAX_CUSTOM_ARGS_BYTES:,}")
        return out


def measure(course: Course, lesson: Lesson, base_url: str | None = None) -> Fit:
    """The lesson's worst-case personalization, as it would go into the request (needs an
    app context: it renders with the app's templates, secret and ``BASE_URL``)."""
    rendered = render_lesson(course, lesson, base_url)
    parts = [
        personalization(rendered.template, recipient_for(
            rendered, delivery_id=MAX_ID, subscriber_id=MAX_ID, email=worst_address(),
            name=name))
        for name in worst_names()
    ]
    return Fit(
        substitutions=max(len(p.get("substitutions", {})) for p in parts),
        substitution_bytes=max(size(p.get("substitutions", {})) for p in parts),
        custom_args_bytes=max(size(p.get("custom_args", {})) for p in parts),
    )


def course_problems(course: Course, base_url: str | None = None) -> list[str]:
    """``path: problem`` for every lesson whose personalization would not fit."""
    return [f"{lesson.path}: {problem}"
            for lesson in course.lessons
            for problem in measure(course, lesson, base_url).problems()]
