"""SMTP: one connection per batch, verified STARTTLS and login when configured."""

from __future__ import annotations

import smtplib
import ssl

from . import Recipient, Result, Template, personalize
from .errors import AuthError, TransientError, UnknownOutcomeError


class SMTPBackend:
    def __init__(self, host: str, port: int = 587, username: str = "", password: str = "",
                 starttls: bool = True, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None):
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.starttls, self.timeout = starttls, timeout
        self.ssl_context = ssl_context  # None: the system's trusted CAs, hostname checked

    def send_batch(self, template: Template, recipients: list[Recipient]) -> list[Result]:
        try:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except OSError as exc:
            raise TransientError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        results: list[Result | None] = []
        opened = False
        try:
            self._open(conn)
            opened = True
            for recipient in recipients:
                msg = personalize(template, recipient)
                try:
                    conn.send_message(msg)
                except smtplib.SMTPRecipientsRefused as exc:
                    results.append(Result(ok=False, error=str(exc.recipients)))
                    continue
                except smtplib.SMTPResponseException as exc:
                    error = f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"
                    if 400 <= exc.smtp_code < 500:
                        raise TransientError(error, results=results) from exc
                    results.append(Result(ok=False, error=error))
                    continue
                results.append(Result(ok=True, message_id=str(msg["Message-ID"]).strip("<>")))
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if opened:
                # Lost while a message was in flight: it may have been delivered.
                raise UnknownOutcomeError(f"connection lost: {exc}", results=results,
                                          in_flight=1) from exc
            raise TransientError(str(exc)) from exc
        finally:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()
        return [r for r in results if r is not None]

    def _open(self, conn: smtplib.SMTP) -> None:
        try:
            if self.starttls:
                conn.starttls(context=self.ssl_context or ssl.create_default_context())
            if self.username:
                conn.login(self.username, self.password)
        except smtplib.SMTPAuthenticationError as exc:
            raise AuthError(exc.smtp_code, f"SMTP login refused: {exc.smtp_error!r}") from exc
