"""SMTP: one connection per batch, STARTTLS and login when configured."""

from __future__ import annotations

import smtplib

from . import Recipient, Result, Template, TransientError, personalize


class SMTPBackend:
    def __init__(self, host: str, port: int = 587, username: str = "", password: str = "",
                 starttls: bool = True, timeout: float = 30.0):
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.starttls, self.timeout = starttls, timeout

    def send_batch(self, template: Template, recipients: list[Recipient]) -> list[Result]:
        try:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except OSError as exc:
            raise TransientError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        results = []
        try:
            if self.starttls:
                conn.starttls()
            if self.username:
                conn.login(self.username, self.password)
            for recipient in recipients:
                msg = personalize(template, recipient)
                try:
                    conn.send_message(msg)
                except smtplib.SMTPRecipientsRefused as exc:
                    results.append(Result(ok=False, error=str(exc.recipients)))
                    continue
                except smtplib.SMTPResponseException as exc:
                    if 400 <= exc.smtp_code < 500:
                        raise TransientError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
                    results.append(Result(ok=False, error=f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"))
                    continue
                results.append(Result(ok=True, message_id=str(msg["Message-ID"]).strip("<>")))
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if not results:
                raise TransientError(str(exc)) from exc
            results.extend(Result(ok=False, error=f"connection lost: {exc}")
                           for _ in recipients[len(results):])
        finally:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()
        return results
