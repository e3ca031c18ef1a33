"""Email HTML from MJML: Outlook-safe tables out of a template a person can read.

Mail clients are not browsers. Outlook on Windows lays out with Word, so an email that
holds together needs tables of fixed width inside MSO conditional comments, and Gmail
ignores much CSS that is not inline. MJML is the field's usual way to write that, and
mjml-python (a Rust build of MJML, no Node) compiles it in a fraction of a millisecond,
so we compile at render time: once per lesson version (``render_lesson`` caches it) and
once per confirmation.

``templates/email/*.html`` are Jinja templates that produce MJML (kept ``.html`` so Jinja
escapes what they fill in). The Markdown parts are plain HTML fragments, tidied here so
MJML's strict parser takes any HTML a lesson may hold. The styles of our own elements
(``templates/email/email.css``) are then inlined into the compiled HTML; MJML's head
styles (its phone media queries and Outlook fixes) are kept as they are.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import css_inline
from flask import current_app, render_template
from markupsafe import Markup
from mjml import mjml2html

from .config import ROOT
from .lessons import Course

EMAIL_CSS = ROOT / "templates" / "email" / "email.css"
# Hidden filler after the preheader, so mail apps don't pad their inbox preview with
# whatever text comes next (the course title, "Hi Ada,"): the usual zero-width
# non-joiner and non-breaking space pairs.
PREHEADER_SPACER = Markup("&zwnj;&nbsp;" * 90)
BOLD_RE = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
ITALIC_RE = re.compile(r"(?<![\w*])([*_])(?=\S)(.+?)(?<=\S)\1(?![\w*])")


@cache
def _inliner() -> css_inline.CSSInliner:
    # inline_style_tags=False: MJML's own <style> blocks (media queries, Outlook fixes)
    # must stay in the head, where they work; only our stylesheet goes inline.
    return css_inline.CSSInliner(
        inline_style_tags=False, keep_style_tags=True, load_remote_stylesheets=False,
        extra_css=EMAIL_CSS.read_text(encoding="utf-8"),
    )


def tidy(fragment: str) -> Markup:
    """An HTML fragment re-serialised well formed: closed tags, no stray end tags.

    A lesson may hold raw HTML, and MJML refuses anything that is not balanced.
    """
    return Markup(css_inline.inline_fragment(str(fragment), ""))


def compile_mjml(source: str) -> str:
    """MJML to HTML, with our stylesheet inlined. ``fonts={}``: no web fonts, so opening
    an email never asks Google (or anyone) for a font."""
    return _inliner().inline(mjml2html(source, fonts={}))


def layout_context(course: Course) -> dict[str, Any]:
    """What the layout needs besides the email's own context: who sends it (as absolute
    URLs, since an email has no page to be relative to), the spacer and ``tidy``."""
    base = current_app.config["BASE_URL"]
    author = course.author
    return {
        "site_host": urlsplit(base).netloc,
        "privacy_link": course.privacy_url or f"{base}/privacy",
        "author_photo_url": f"{base}{author.photo_url_path}" if author.photo else "",
        "preheader_spacer": PREHEADER_SPACER,
        "tidy": tidy,
    }


def email_html(template: str, **context: Any) -> str:
    """Render one of ``templates/email/*.html`` (MJML) and compile it to email HTML."""
    return compile_mjml(render_template(template, **layout_context(context["course"]), **context))


def email_text(template: str, **context: Any) -> str:
    """Render the plain-text twin of an email, with the same footer facts."""
    return render_template(template, **layout_context(context["course"]), **context)


def plain_emphasis(text: str) -> str:
    """Markdown emphasis in a plain-text part, the way plain-text mail has long written it:
    ``**bold**`` becomes ``*bold*`` and ``*italic*`` becomes ``_italic_``, so neither is
    lost and the two stay apart. List bullets (``* item``) are left alone."""
    marked: list[str] = []

    def hold(m: re.Match[str]) -> str:
        marked.append(m.group(2))
        return f"\x00{len(marked) - 1}\x00"

    text = BOLD_RE.sub(hold, text)
    text = ITALIC_RE.sub(lambda m: f"_{m.group(2)}_", text)
    return re.sub(r"\x00(\d+)\x00", lambda m: f"*{marked[int(m.group(1))]}*", text)
