"""The admin: one blueprint for the course owner, behind a login.

Every view needs a signed-in admin unless it is listed in ``PUBLIC_ENDPOINTS``, so a new
view is private by default. Every response says ``Cache-Control: no-store`` because the
pages hold subscribers' personal data. Every page a signed-in admin sees says whether
sending is paused and how many deliveries need a person, so neither goes unnoticed.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, render_template, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from ..extensions import login_manager

bp = Blueprint("admin", __name__)

PUBLIC_ENDPOINTS = frozenset({"admin.login"})


@bp.before_request
def require_login() -> Any:
    if request.endpoint in PUBLIC_ENDPOINTS or current_user.is_authenticated:
        return None
    return login_manager.unauthorized()


@bp.after_request
def no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.context_processor
def admin_context() -> dict[str, Any]:
    from .display import iso_utc_time, local_time, utc_time

    context: dict[str, Any] = {
        "outbox_enabled": current_app.config["MAIL_BACKEND"] == "outbox",
        "utc_time": utc_time,
        "local_time": local_time,
        "iso_utc_time": iso_utc_time,
        "sending_paused": None,
        "attention_total": 0,
        "current_user": current_user,
    }
    if current_user.is_authenticated:
        from ..sendstate import paused
        from .queries import attention_counts

        context["sending_paused"] = paused()
        context["attention_total"] = sum(attention_counts().values())
    return context


@bp.errorhandler(404)
@bp.errorhandler(429)
def admin_error(exc: HTTPException) -> tuple[str, int]:
    return render_template("admin/error.html", error=exc), exc.code or 500


@bp.errorhandler(CSRFError)
def csrf_error(exc: CSRFError) -> tuple[str, int]:
    # CSRFProtect rejects the POST before any view runs; say what to do in plain words.
    return render_template("admin/error.html", error=exc, csrf=True), 400


from . import (  # noqa: E402, F401  (registers the routes on bp)
    actions,
    auth,
    dashboard,
    deliveries,
    export,
    lesson_preview,
    lessons,
    outbox,
    views,
    webhooks,
)
