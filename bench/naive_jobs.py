"""The naive way, as the benchmark's baseline: one RQ job and one API call per email.

This is what a first version usually looks like: a job per recipient that builds one
message with the official client's helpers and posts it. It touches no database, so the
baseline is if anything flattered; run by plain ``rq worker`` processes.
"""

from __future__ import annotations

from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, Header, Mail


def send_one(host: str, api_key: str, message: dict[str, str],
             headers: dict[str, str], custom_args: dict[str, str]) -> str:
    """Send one already-personalised email; returns SendGrid's message id."""
    mail = Mail(
        from_email=(message["from_email"], message["from_name"]),
        to_emails=(message["to_email"], message["to_name"]),
        subject=message["subject"],
        plain_text_content=message["text"],
        html_content=message["html"],
    )
    for name, value in headers.items():
        mail.add_header(Header(name, value))
    for key, value in custom_args.items():
        mail.add_custom_arg(CustomArg(key, value))
    client = SendGridAPIClient(api_key=api_key, host=host)
    response = client.client.mail.send.post(request_body=mail.get())
    return str(response.headers.get("X-Message-Id", ""))
