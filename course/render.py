"""Turning a lesson into an email: rendered once per content hash, personalised last.

The expensive part (Markdown, the layout, CSS inlining) happens once per lesson version
and yields a :class:`~course.mail.Template` full of ``%%key%%`` placeholders. Each
recipient then only costs a handful of signed tokens: see :func:`recipient_for`.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

import css_inline
from flask import current_app, render_template
from markupsafe import Markup

from . import tokens
from .lessons import Course, Lesson, render_markdown
from .mail import Recipient, Template

HREF_RE = re.compile(r'<a\s+href="([^"]+)"')
MD_LINK_RE = re.compile(r"(?<!!)\[([^\]]+)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@dataclass(frozen=True)
class RenderedLesson:
    """A lesson email with placeholders, plus the list of link targets it tracks."""

    template: Template
    links: tuple[str, ...]
    content_hash: str
    # Each link's click-token payload prefix and placeholder, written once per lesson
    # version rather than once per recipient (see ``recipient_for``).
    click_parts: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = tuple((_click_key(i), f',"u":{json.dumps(url)}}}')
                      for i, url in enumerate(self.links))
        object.__setattr__(self, "click_parts", parts)


def _click_key(index: int) -> str:
    return f"%%click_{index}%%"


def rewrite_links_html(body_html: str, links: list[str]) -> str:
    """Replace every ``href`` with a click placeholder; ``links`` collects the real targets."""

    def repl(m: re.Match[str]) -> str:
        url = html.unescape(m.group(1))
        if url.startswith("mailto:"):
            return m.group(0)
        if url not in links:
            links.append(url)
        return f'<a href="{_click_key(links.index(url))}"'

    return HREF_RE.sub(repl, body_html)


def markdown_to_text(body: str, links: list[str]) -> str:
    """A readable plain-text part: Markdown is already text, links become tracked URLs."""

    def repl(m: re.Match[str]) -> str:
        url = m.group(2)
        if url.startswith("mailto:"):
            return f"{m.group(1)} ({url[7:]})"
        if url not in links:
            links.append(url)
        return f"{m.group(1)} ({_click_key(links.index(url))})"

    text = MD_LINK_RE.sub(repl, body)
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    text = re.sub(r"(?m)^#{1,6}\s+(.*)$", lambda m: m.group(1).upper(), text)
    return text.strip()


def render_lesson(course: Course, lesson: Lesson) -> RenderedLesson:
    """Render (or fetch from the per-process cache) one lesson version."""
    cache: dict[str, RenderedLesson] = current_app.extensions.setdefault("minicourse_render", {})
    key = f"{lesson.content_hash}:{course.sender_name}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    links: list[str] = []
    body_html = rewrite_links_html(render_markdown(lesson.body), links)
    context: dict[str, Any] = dict(course=course, lesson=lesson, body=Markup(body_html))
    raw_html = render_template("email/lesson.html", **context)
    text = render_template(
        "email/lesson.txt", **context, body_text=markdown_to_text(lesson.body, links)
    )
    template = Template(
        subject=lesson.subject,
        html=css_inline.inline(raw_html),
        text=text,
        from_email=current_app.config["MAIL_FROM"],
        from_name=course.sender_name,
        reply_to=current_app.config.get("MAIL_REPLY_TO", ""),
        categories=("lesson", lesson.slug),
    )
    rendered = RenderedLesson(template, tuple(links), lesson.content_hash)
    if len(cache) > 256:
        cache.clear()
    cache[key] = rendered
    return rendered


def external_url(path: str) -> str:
    return current_app.config["BASE_URL"] + path


def greeting(name: str) -> str:
    return f"Hi {name}," if name else "Hi there,"


def recipient_for(
    rendered: RenderedLesson, *, delivery_id: int, subscriber_id: int, email: str, name: str,
    signer: tokens.Signer | None = None, base_url: str | None = None,
) -> Recipient:
    """Per-recipient substitutions: the name and every signed, purpose-scoped link.

    A batch passes one ``signer`` and ``base_url`` for all its recipients. This runs once
    per lesson sent, so the token payloads are written here directly, as the canonical
    JSON ``tokens.payload_json`` would write them (``{"d":1}``, keys sorted, compact).
    """
    sign = (signer or tokens.Signer()).make_json
    base = base_url if base_url is not None else current_app.config["BASE_URL"]
    d = f'{{"d":{delivery_id:d}}}'
    canary = f'{{"d":{delivery_id:d},"k":1,"u":""}}'
    unsubscribe = f'{{"s":{subscriber_id:d}}}'
    unsubscribe_url = f"{base}/u/{sign('unsubscribe', unsubscribe)}"
    hello = greeting(name)
    subs = {
        "%%greeting%%": hello,
        "%%greeting_html%%": html.escape(hello),
        "%%open_url%%": f"{base}/o/{sign('open', d)}.gif",
        "%%done_url%%": f"{base}/done/{sign('complete', d)}",
        "%%web_url%%": f"{base}/l/{sign('web', d)}",
        # A hidden link no person sees: whatever follows it is a machine (course/machines.py).
        "%%canary_url%%": f"{base}/c/{sign('click', canary)}",
        "%%unsubscribe_url%%": unsubscribe_url,
    }
    for key, rest in rendered.click_parts:
        subs[key] = f"{base}/c/{sign('click', d[:-1] + rest)}"
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
        html=css_inline.inline(render_template("email/confirm.html", **context)),
        text=render_template("email/confirm.txt", **context),
        from_email=current_app.config["MAIL_FROM"],
        from_name=course.sender_name,
        reply_to=current_app.config.get("MAIL_REPLY_TO", ""),
        categories=("confirmation",),
    )
    return template, Recipient(email=email)
