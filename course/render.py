"""Turning a lesson into an email: rendered once per content hash, personalised last.

The expensive part (Markdown, the MJML layout, CSS inlining: ``course/email_layout.py``)
happens once per lesson version and yields a :class:`~course.mail.Template` with a few
placeholders. Each recipient then
only costs a handful of signed tokens: see :func:`recipient_for`.

Placeholders are safe by construction. Each rendering draws a random marker
(``%%mc<12 hex>_greeting%%``) and keeps the result only if that marker occurs nowhere
but in its own placeholders (not in the lesson, the names or the links), so no text a
lesson author or subscriber writes is ever read as one, and SendGrid, which fills them in
itself, gets the same email as :func:`course.mail.substitute` makes for other backends.

Click tracking costs each recipient one short token, however many links a lesson has:
each link's target is signed once per lesson version into the template
(``/c/<link token>/<recipient token>``), and the click redirect checks that the two
tokens were made for the same lesson version. So SendGrid's 10,000 bytes of
substitutions per recipient hold a lesson of any number of links.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from flask import current_app
from markupsafe import Markup

from . import tokens
from .email_layout import email_html, email_text, plain_emphasis
from .lessons import Course, Lesson, render_markdown
from .mail import Recipient, Template

HREF_RE = re.compile(r'<a\s+href="([^"]+)"')
MD_LINK_RE = re.compile(r"(?<!!)\[([^\]]+)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# What each recipient's substitutions fill in (``click`` is their half of every click link).
RECIPIENT_KEYS = ("greeting", "greeting_html", "open_url", "done_url", "web_url",
                  "unsubscribe_url", "click")
NONCE_TRIES = 8
# How much of the content hash binds a click link to the lesson version it was made for.
LESSON_KEY_LENGTH = 16


def new_nonce() -> str:
    return "mc" + secrets.token_hex(6)


def marks_for(nonce: str, keys: Iterable[str]) -> dict[str, str]:
    """The placeholder for each key under this rendering's marker."""
    return {key: f"%%{nonce}_{key}%%" for key in keys}


def only_marks(nonce: str, texts: Iterable[str], allowed: Iterable[str]) -> bool:
    """True when every occurrence of ``nonce`` in ``texts`` is one of the ``allowed``
    placeholders: then nothing else can be read as one, whatever fills them in."""
    allowed = set(allowed)
    found = re.compile(f"%%{nonce}_[a-z0-9_]+%%")
    for text in texts:
        marks = found.findall(text)
        if len(marks) != text.count(nonce) or not allowed.issuperset(marks):
            return False
    return True


def without(nonce: str, value: str) -> str:
    """``value`` with no trace of the marker (a name cannot smuggle a placeholder in)."""
    while nonce in value:
        value = value.replace(nonce, "")
    return value


@dataclass(frozen=True)
class RenderedLesson:
    """A lesson email with placeholders for one recipient's data, and its tracked links.

    ``tracked[i]`` is the click URL of ``links[i]`` exactly as it stands in the template
    (ending with the recipient's placeholder), so a preview can swap it for the target.
    """

    template: Template
    links: tuple[str, ...]
    content_hash: str
    base_url: str
    nonce: str
    tracked: tuple[str, ...] = ()
    # Worked out once per lesson version, not once per recipient (see ``recipient_for``).
    marks: dict[str, str] = field(init=False, repr=False, compare=False)
    mark_tuple: tuple[str, ...] = field(init=False, repr=False, compare=False)
    lesson_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        marks = marks_for(self.nonce, RECIPIENT_KEYS)
        object.__setattr__(self, "marks", marks)
        object.__setattr__(self, "mark_tuple", tuple(marks[key] for key in RECIPIENT_KEYS))
        object.__setattr__(self, "lesson_key", self.content_hash[:LESSON_KEY_LENGTH])

    def with_links(self, choose: Callable[[str], bool]) -> Template:
        """The template with each chosen link going straight to its target, untracked."""
        html_part, text_part = self.template.html, self.template.text
        for url, tracked in zip(self.links, self.tracked, strict=True):
            if choose(url):
                html_part = html_part.replace(tracked, url)
                text_part = text_part.replace(tracked, url)
        return replace(self.template, html=html_part, text=text_part)


def rewrite_links_html(body_html: str, links: list[str], mark: Callable[[int], str]) -> str:
    """Replace every ``href`` with the link's placeholder; ``links`` collects the targets."""

    def repl(m: re.Match[str]) -> str:
        url = html.unescape(m.group(1))
        if url.startswith("mailto:"):
            return m.group(0)
        if url not in links:
            links.append(url)
        return f'<a href="{mark(links.index(url))}"'

    return HREF_RE.sub(repl, body_html)


def markdown_to_text(body: str, links: list[str], mark: Callable[[int], str]) -> str:
    """A readable plain-text part: Markdown is already text, links become tracked URLs."""

    def repl(m: re.Match[str]) -> str:
        url = m.group(2)
        if url.startswith("mailto:"):
            return f"{m.group(1)} ({url[7:]})"
        if url not in links:
            links.append(url)
        return f"{m.group(1)} ({mark(links.index(url))})"

    text = MD_LINK_RE.sub(repl, body)
    text = plain_emphasis(text)
    text = re.sub(r"(?m)^#{1,6}\s+(.*)$", lambda m: m.group(1).upper(), text)
    return text.strip()


def render_lesson(course: Course, lesson: Lesson, base_url: str | None = None) -> RenderedLesson:
    """Render (or fetch from the per-process cache) one lesson version for ``base_url``
    (default ``BASE_URL``): its click links are signed into it."""
    base = (base_url if base_url is not None else current_app.config["BASE_URL"]).rstrip("/")
    cache: dict[str, RenderedLesson] = current_app.extensions.setdefault("minicourse_render", {})
    key = f"{lesson.content_hash}:{course.sender_name}:{base}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    for _ in range(NONCE_TRIES):
        rendered = _render(course, lesson, base, new_nonce())
        if rendered is not None:
            break
    else:  # pragma: no cover - a 48-bit random marker found in the content 8 times
        raise RuntimeError(f"no placeholder marker fits lesson {lesson.slug!r}")
    if len(cache) > 256:
        cache.clear()
    cache[key] = rendered
    return rendered


def _render(course: Course, lesson: Lesson, base: str, nonce: str) -> RenderedLesson | None:
    """One rendering under ``nonce``; None if the marker turns up where it must not."""
    mark = marks_for(nonce, RECIPIENT_KEYS)
    signer = tokens.Signer()
    lesson_key = lesson.content_hash[:LESSON_KEY_LENGTH]

    def click_url(payload: dict[str, Any]) -> str:
        link = signer.make("link", {"l": lesson_key, **payload})
        return f"{base}/c/{link}/{mark['click']}"

    def link_mark(index: int) -> str:
        return f"%%{nonce}_link_{index}%%"

    links: list[str] = []
    body_html = rewrite_links_html(render_markdown(lesson.body), links, link_mark)
    context: dict[str, Any] = dict(course=course, lesson=lesson, body=Markup(body_html),
                                   mark=mark, canary_url=click_url({"k": 1, "u": ""}))
    page = email_html("email/lesson.html", **context)
    text = email_text("email/lesson.txt", **context,
                      body_text=markdown_to_text(lesson.body, links, link_mark))
    parts = [lesson.subject, page, text]
    if not only_marks(nonce, parts, [*mark.values(), *map(link_mark, range(len(links)))]):
        return None
    tracked = tuple(click_url({"u": url}) for url in links)
    fill = re.compile(f"%%{nonce}_link_([0-9]+)%%")
    subject, body, text = (fill.sub(lambda m: tracked[int(m.group(1))], part) for part in parts)
    if not only_marks(nonce, (subject, body, text), mark.values()):
        return None  # a link's token happened to contain the marker
    template = Template(
        subject=subject,
        html=body,
        text=text,
        from_email=current_app.config["MAIL_FROM"],
        from_name=course.sender_name,
        reply_to=course.reply_to or current_app.config.get("MAIL_REPLY_TO", ""),
        categories=("lesson", lesson.slug),
    )
    return RenderedLesson(template, tuple(links), lesson.content_hash, base, nonce, tracked)


def external_url(path: str) -> str:
    return current_app.config["BASE_URL"] + path


def greeting(name: str) -> str:
    return f"Hi {name}," if name else "Hi there,"


def recipient_for(
    rendered: RenderedLesson, *, delivery_id: int, subscriber_id: int, email: str, name: str,
    signer: tokens.Signer | None = None, base_url: str | None = None,
) -> Recipient:
    """Per-recipient substitutions: the greeting, the signed links, and the one token that
    completes every click link of the lesson.

    A batch passes one ``signer`` for all its recipients. This runs once per lesson sent,
    so the token payloads are written here directly, as the canonical JSON
    ``tokens.payload_json`` would write them (``{"d":1}``, keys sorted, compact). The
    links go to the address the lesson was rendered for; ``base_url``, if given, must be it.
    """
    base = rendered.base_url
    if base_url is not None and base_url != base and base_url.rstrip("/") != base:
        raise ValueError(f"lesson rendered for {base}, not {base_url}")
    sign = (signer or tokens.Signer()).make_json
    d = f'{{"d":{delivery_id:d}}}'
    unsubscribe = f'{{"s":{subscriber_id:d}}}'
    unsubscribe_url = f"{base}/u/{sign('unsubscribe', unsubscribe)}"
    hello = greeting(without(rendered.nonce, name) if rendered.nonce in name else name)
    # The placeholders, in RECIPIENT_KEYS order (unpacked: cheaper than seven lookups).
    p_greet, p_greet_html, p_open, p_done, p_web, p_unsub, p_click = rendered.mark_tuple
    subs = {
        p_greet: hello,
        p_greet_html: html.escape(hello),
        p_open: f"{base}/o/{sign('open', d)}.gif",
        p_done: f"{base}/done/{sign('complete', d)}",
        p_web: f"{base}/l/{sign('web', d)}",
        p_unsub: unsubscribe_url,
        p_click: sign("click", f'{{"d":{delivery_id:d},"l":"{rendered.lesson_key}"}}'),
    }
    return Recipient(
        email=email,
        name=name,
        substitutions=subs,
        headers={
            "List-Unsubscribe": f"<{unsubscribe_url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        custom_args={"delivery_id": str(delivery_id)},
    )


def confirmation_email(course: Course, *, token: str, email: str) -> tuple[Template, Recipient]:
    """The double opt-in message. Not tracked: it carries only the confirm link.

    No name anywhere, neither in the To header nor in the greeting: whoever fills in the
    form chooses it, and this email goes to an address that has not agreed to anything yet.
    ``token`` is the signed confirm token of one signup (``course.signup.confirmation_token``).
    """
    confirm_url = external_url(f"/confirm/{token}")
    context: dict[str, Any] = dict(
        course=course,
        intro=Markup(render_markdown(course.confirmation_intro)),
        intro_text=course.confirmation_intro.strip(),
        confirm_url=confirm_url,
        hours=current_app.config["CONFIRM_MAX_AGE"] // 3600,
    )
    template = Template(
        subject=course.confirmation_subject,
        html=email_html("email/confirm.html", **context),
        text=email_text("email/confirm.txt", **context),
        from_email=current_app.config["MAIL_FROM"],
        from_name=course.sender_name,
        reply_to=course.reply_to or current_app.config.get("MAIL_REPLY_TO", ""),
        categories=("confirmation",),
    )
    return template, Recipient(email=email)
