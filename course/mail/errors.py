"""Typed mail errors: each one tells the pipeline what to do with the batch it was sending.

| error                 | was anything sent?          | the pipeline should                  |
| --------------------- | --------------------------- | ------------------------------------- |
| TransientError        | no (not accepted)           | requeue, back off; no attempt used    |
| UnknownOutcomeError   | maybe (no answer came back) | mark unconfirmed; never resend blindly|
| PermanentError        | no (request refused)        | fail the deliveries with ``message``  |
| AuthError             | no (credentials refused)    | requeue and pause all sending         |

A backend that splits a batch into several requests can fail part-way: ``results`` then
holds one entry per recipient of the batch, a :class:`~course.mail.Result` for those
already settled (sent, or refused on their own) and ``None`` for those the error applies
to. It is empty when nothing was settled. This module imports nothing from the package so
that ``course/mail/__init__.py`` can re-export it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import Result


class MailError(Exception):
    """Base of every error a mail backend raises on purpose."""

    def __init__(self, message: str, *, results: list[Result | None] | None = None):
        super().__init__(message)
        self.message = message
        self.results: list[Result | None] = list(results or [])

    def result_for(self, index: int) -> Result | None:
        """The settled outcome of recipient ``index`` of the batch, or None if the error applies."""
        return self.results[index] if index < len(self.results) else None


class TransientError(MailError):
    """The batch was not accepted: it can be retried later (network trouble, provider busy)."""

    def __init__(self, message: str, *, retry_after: float | None = None,
                 results: list[Result | None] | None = None):
        super().__init__(message, results=results)
        self.retry_after = retry_after


class UnknownOutcomeError(MailError):
    """The request reached the provider but no answer came back: it may have been sent.

    ``in_flight`` is how many recipients, from the first one ``results`` leaves unsettled,
    were in the request that got no answer; the rest were never tried (SMTP sends one
    message at a time). None: every unsettled recipient was in it.
    """

    def __init__(self, message: str, *, results: list[Result | None] | None = None,
                 in_flight: int | None = None):
        super().__init__(message, results=results)
        self.in_flight = in_flight


class PermanentError(MailError):
    """The provider refused the request as invalid (400, 413): sending it again cannot help."""

    def __init__(self, status: int, message: str, *, errors: list[dict[str, Any]] | None = None,
                 results: list[Result | None] | None = None):
        super().__init__(message, results=results)
        self.status = status
        self.errors = list(errors or [])  # the provider's structured errors, when it gave any

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"


class AuthError(MailError):
    """The provider refused our credentials (401, 403): every send fails until someone acts."""

    def __init__(self, status: int, message: str,
                 *, results: list[Result | None] | None = None):
        super().__init__(message, results=results)
        self.status = status

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}"
