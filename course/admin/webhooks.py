"""Outgoing webhooks in the admin: what integrators were sent, and what gave up."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from .. import webhooks_out
from ..ids import parse_ids
from . import bp
from .deliveries import MAX_IDS


@bp.route("/webhooks")
def webhooks() -> str:
    return render_template(
        "admin/webhooks.html",
        urls=current_app.config.get("WEBHOOK_URLS") or [],
        counts=webhooks_out.webhook_counts(),
        failed=webhooks_out.failed_webhooks(100),
    )


@bp.route("/webhooks/retry", methods=["POST"])
def retry_webhooks() -> Response:
    """Start the ticked failed webhooks over (they are enqueued once this commits)."""
    ids = parse_ids(request.form.getlist("id")[:MAX_IDS])
    if not ids:
        flash("Nothing was retried: tick the webhooks to retry first.", "error")
    else:
        n = webhooks_out.retry_failed(ids)
        flash(f"{n} webhook{'s' if n != 1 else ''} will be tried again.")
    return redirect(url_for("admin.webhooks"))
