"""The public pages: the course's landing page and signup, confirmation, unsubscription.

Signup answers the same page whatever state the address is in (no enumeration). Links
from emails never change anything on GET: mail scanners follow them. The confirm page
submits its own form with a script, so a person is confirmed at once and a scanner is not.
The error pages for the whole app live here too, so nobody ever sees a traceback.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, send_file
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from markupsafe import Markup
from werkzeug.exceptions import HTTPException, abort

from . import tokens
from .content import current_course
from .extensions import csrf, db, limiter
from .forms import SignupForm
from .lessons import render_markdown
from .models import Status, Subscriber
from .signup import (
    Consent,
    can_resend,
    confirm,
    pick_timezone,
    resend_confirmation,
    signup,
    unsubscribe,
)

log = logging.getLogger(__name__)

bp = Blueprint("public", __name__)

INVALID_LINK = (
    "This link is not valid. It may have been cut short when it was copied: "
    "try opening it again straight from the email."
)
MAX_ID = 2**31 - 1  # primary keys are 32-bit integers
ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
# Subscribers who have confirmed; an old confirmation link simply welcomes them again.
CONFIRMED = (Status.ACTIVE, Status.PAUSED, Status.FINISHED)

ERROR_TEXT: dict[int, tuple[str, str]] = {
    400: ("Something was wrong with that request",
          "We couldn't make sense of what your browser sent. Go back and try again."),
    404: ("Page not found", "There is nothing at this address. Check the link, or start from "
                            "the course page."),
    405: ("That didn't work", "This page can't be used that way. Go back and use the button "
                              "on the page."),
    413: ("Too much data", "What you sent is larger than this site accepts."),
    429: ("Slow down a little",
          "There have been too many attempts from your connection in a short time. "
          "Please wait a few minutes and try again."),
    500: ("Something went wrong on our side",
          "Sorry, we couldn't finish that. Please try again in a few minutes."),
    503: ("We can't do that right now",
          "We couldn't send your email just now. Please try again in a few minutes."),
}
CSRF_TEXT = (
    "This form has expired or was sent from another site. Go back, reload the page and "
    "press the button again."
)


def render_page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    """Render a public page with the course in the context (the layout needs its title)."""
    return render_template(template, course=current_course(), **context), status


def markdown(text: str) -> Markup:
    """Course and lesson Markdown is written by the course owner, so it is trusted HTML."""
    return Markup(render_markdown(text))


def token_id(purpose: str, token: str, key: str, max_age: int | None = None) -> int:
    """The id a signed token carries, or a 400 page: no id in a URL is trusted on its own.

    ``TokenExpired`` passes through so a caller can offer something better than an error.
    """
    try:
        payload = tokens.read(purpose, token, max_age=max_age)
    except tokens.TokenExpired:
        raise
    except tokens.TokenInvalid:
        abort(400, description=INVALID_LINK)
    return id_from(payload, key)


def id_from(payload: Any, key: str) -> int:
    """A row id from a token's payload: a positive 32-bit integer, or a 400 page.

    Only we sign tokens, so a bad id means a bug or a leaked key; either way it must not
    reach the database (SQLite cannot even bind an integer past 64 bits).
    """
    value = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_ID:
        abort(400, description=INVALID_LINK)
    return value


def signup_limit() -> str:
    return str(current_app.config["SIGNUP_RATE_LIMIT"])


# Signing up and asking for a new confirmation link both send mail, so they share a limit.
signup_rate_limit = limiter.shared_limit(signup_limit, scope="signup", methods=["POST"])


def landing(form: SignupForm, status: int = 200) -> tuple[str, int]:
    course = current_course()
    return render_page(
        "public/index.html", status, form=form, description=markdown(course.description),
        timing=course.timing,
    )


# Who runs the course: the author's photo and the privacy page (course/lessons_identity.py).
PHOTO_MAX_AGE = 7 * 24 * 3600
MAIL_PROVIDERS = {"sendgrid": "SendGrid (Twilio Inc.)", "smtp": "our email provider"}


@bp.route("/author/photo")
def author_photo() -> ResponseReturnValue:
    """The photo named in course.yml, and only it: the path comes from the loader, never
    from the URL. Emails ask for it with ``?v=`` (a digest), so a new photo shows at once."""
    author = current_course().author
    if not author.photo:
        abort(404)
    return send_file(author.photo_path, mimetype=author.photo_type, max_age=PHOTO_MAX_AGE)


@bp.route("/privacy")
def privacy() -> ResponseReturnValue:
    """The built-in privacy page, or the owner's own (``privacy_url`` in course.yml)."""
    course = current_course()
    if course.privacy_url:
        return redirect(course.privacy_url)
    config = current_app.config
    return render_page(
        "public/privacy.html",
        contact=config["MAIL_REPLY_TO"] or config["MAIL_FROM"],
        provider=MAIL_PROVIDERS.get(config["MAIL_BACKEND"], "our email provider"),
    )


@bp.route("/", methods=["GET", "POST"])
@signup_rate_limit
def index() -> ResponseReturnValue:
    form = SignupForm()
    if request.method == "GET":
        return landing(form)
    if not form.validate():
        return landing(form, 400)
    consent = Consent(ip=request.remote_addr or "", user_agent=request.user_agent.string or "")
    # Saved even when Redis is down: the cron sends the confirmation once it is back.
    signup(form.normalised_email, form.cleaned_name, pick_timezone(form.timezone.data),
           consent)
    return check_inbox(form.normalised_email)


def check_inbox(email: str | None = None) -> tuple[str, int]:
    """The one answer to every signup, so it cannot tell who is subscribed. It repeats the
    address (as typed, but canonical, so a typo shows) and who the email comes from."""
    return render_page("public/check_inbox.html", email=email,
                       sender_name=current_course().sender_name,
                       sender_email=current_app.config["MAIL_FROM"],
                       hours=current_app.config["CONFIRM_MAX_AGE"] // 3600)


def nonce_from(payload: Any) -> str:
    """The signup nonce a confirm token carries; "" for links made before nonces existed."""
    value = payload.get("n", "") if isinstance(payload, dict) else ""
    if not isinstance(value, str) or len(value) > 32:
        abort(400, description=INVALID_LINK)
    return value


def confirm_payload(token: str, max_age: int | None = None) -> tuple[int, str]:
    """The subscriber id and signup nonce of a confirm token (``TokenExpired`` passes)."""
    try:
        payload = tokens.read("confirm", token, max_age=max_age)
    except tokens.TokenExpired:
        raise
    except tokens.TokenInvalid:
        abort(400, description=INVALID_LINK)
    return id_from(payload, "s"), nonce_from(payload)


@bp.route("/confirm/<token>", methods=["GET", "POST"])
def confirm_page(token: str) -> ResponseReturnValue:
    try:
        sub_id, nonce = confirm_payload(token, max_age=current_app.config["CONFIRM_MAX_AGE"])
    except tokens.TokenExpired as exc:
        return expired(token, exc.payload)
    if request.method == "GET":
        return render_page("public/confirm.html", token=token)
    sub = confirm(sub_id, nonce)
    if sub is None:
        abort(400, description=INVALID_LINK)
    if sub.status not in CONFIRMED:
        abort(400, description="This confirmation link has been used up or replaced. To join "
                               "the course, sign up again on the course page.")
    return render_page("public/welcome.html", welcome=markdown(current_course().welcome))


def expired(token: str, payload: Any) -> tuple[str, int]:
    """An old confirmation link: offer a fresh one if the subscriber is still waiting."""
    sub_id, nonce = id_from(payload, "s"), nonce_from(payload)
    sub = db.session.get(Subscriber, sub_id)
    if sub is not None and sub.status in CONFIRMED:
        return render_page("public/welcome.html", welcome=markdown(current_course().welcome),
                           already=True)
    return render_page("public/confirm_expired.html", 410, token=token,
                       can_resend=can_resend(sub_id, nonce),
                       hours=current_app.config["CONFIRM_MAX_AGE"] // 3600)


@bp.route("/confirm/<token>/resend", methods=["POST"])
@signup_rate_limit
def resend(token: str) -> ResponseReturnValue:
    try:
        sub_id, nonce = confirm_payload(token)
    except tokens.TokenExpired as exc:
        sub_id, nonce = id_from(exc.payload, "s"), nonce_from(exc.payload)
    # Saved even when Redis is down, as a signup is.
    resend_confirmation(sub_id, nonce)
    return check_inbox()


def rejoin_form(sub: Subscriber | None) -> SignupForm:
    # formdata=None: this page answers a POST whose fields are not the signup's.
    return SignupForm(formdata=None, email=sub.email if sub else "",
                      name=sub.name if sub else "")


@bp.route("/u/<token>", methods=["GET", "POST"])
@csrf.exempt
def unsubscribe_page(token: str) -> ResponseReturnValue:
    """Unsubscribe. Exempt from blanket CSRF so RFC 8058 one-click POSTs work without cookies.

    A mail provider's one-click POST carries only ``List-Unsubscribe=One-Click``; any
    other POST (the button on the page) must pass the usual CSRF check.
    """
    try:
        sub_id = token_id("unsubscribe", token, "s")
    except tokens.TokenExpired:  # unsubscribe tokens are made to never expire
        abort(400, description=INVALID_LINK)
    if request.method == "POST":
        if request.form.get(ONE_CLICK_FIELD) == ONE_CLICK_VALUE:
            unsubscribe(sub_id)
            return render_page("public/unsubscribed.html", form=None)
        csrf.protect()
        sub = unsubscribe(sub_id)
        return render_page("public/unsubscribed.html", form=rejoin_form(sub))
    sub = db.session.get(Subscriber, sub_id)
    if sub is None or sub.status == Status.UNSUBSCRIBED:
        return render_page("public/unsubscribed.html", form=rejoin_form(sub))
    return render_page("public/unsubscribe.html", token=token, email=sub.email)


@bp.app_errorhandler(400)
@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
@bp.app_errorhandler(413)
@bp.app_errorhandler(429)
@bp.app_errorhandler(500)
@bp.app_errorhandler(503)
def error_page(exc: HTTPException) -> ResponseReturnValue:
    """A friendly page for every error, keeping headers such as ``Allow`` and ``Retry-After``."""
    code = exc.code or 500
    title, text = ERROR_TEXT.get(code, ERROR_TEXT[500])
    if isinstance(exc, CSRFError):
        text = CSRF_TEXT
    elif exc.description and exc.description != type(exc).description:
        text = exc.description  # one of ours, written for people
    headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
    if code == 429:
        headers.append(("Retry-After", str(retry_after())))
    html, _ = render_page("public/error.html", code=code, title=title, text=text)
    return html, code, headers


def retry_after() -> int:
    """Seconds until the limit that was hit resets (Flask-Limiter also sets the header)."""
    current = limiter.current_limit
    if current is None:
        return 60
    return max(1, int(current.reset_at - time.time()))
