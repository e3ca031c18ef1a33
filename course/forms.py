"""Forms for the public pages. Validation here, so the views only see clean values.

The signup form normalises as it validates: after ``validate()`` the canonical address is
in ``form.normalised_email`` and the cleaned name in ``form.cleaned_name``.
"""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, StringField
from wtforms.validators import DataRequired, InputRequired, ValidationError

from .signup_input import NAME_MAX, AddressError, clean_name, name_problem, subscriber_address


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
        try:
            self.normalised_email = subscriber_address(field.data or "")
        except AddressError as exc:
            raise ValidationError(str(exc)) from None

    def validate_name(self, field: StringField) -> None:
        cleaned = clean_name(field.data)
        problem = name_problem(cleaned)
        if problem:
            raise ValidationError(problem)
        self.cleaned_name = cleaned
