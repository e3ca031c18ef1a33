"""Forms for the public pages. Validation here, so the views only see clean values.

The signup form normalises as it validates: after ``validate()`` the canonical address is
in ``form.normalised_email`` and the cleaned name in ``form.cleaned_name``.
"""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, StringField
from wtforms.validators import DataRequired, InputRequired, ValidationError

from .signup import NAME_MAX, clean_name, normalise_email


class SignupForm(FlaskForm):
    """Email, an optional first name, consent, and the browser's time zone (set by JS)."""

    email = EmailField(
        "Email address",
        validators=[InputRequired(message="Please enter your email address.")],
        render_kw={"autocomplete": "email", "required": True, "maxlength": 320,
                   "spellcheck": "false", "autocapitalize": "off"},
    )
    name = StringField(
        "First name (optional)",
        render_kw={"autocomplete": "given-name", "maxlength": NAME_MAX},
    )
    # The wording shown next to the box is in templates/public/_forms.html.
    consent = BooleanField(
        "I agree to receive the course by email",
        validators=[DataRequired(message="Please tick the box so we may send you the lessons.")],
        render_kw={"required": True},
    )
    timezone = HiddenField()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.normalised_email = ""
        self.cleaned_name = ""

    def validate_email(self, field: EmailField) -> None:
        address = normalise_email(
            field.data or "",
            check_deliverability=current_app.config["EMAIL_CHECK_DELIVERABILITY"],
        )
        if address is None:
            raise ValidationError("Please enter a valid email address, like name@example.com.")
        self.normalised_email = address

    def validate_name(self, field: StringField) -> None:
        cleaned = clean_name(field.data)
        if len(cleaned) > NAME_MAX:
            raise ValidationError(f"Please keep your name to {NAME_MAX} characters or fewer.")
        self.cleaned_name = cleaned
