"""The SMTP backend against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import datetime as dt
import email
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from course.mail import Recipient, Template, TransientError
from course.mail.errors import AuthError, MailError
from course.mail.smtp import SMTPBackend

TEMPLATE = Template(
    subject="Lesson 1: small steps",
    html='<p>%%greeting_html%%</p><a href="%%click_0%%">Read</a>',
    text="%%greeting%%\n\nRead: %%click_0%%",
    from_email="course@minicourse.test",
    from_name="Networking course",
)


def recipient(i: int) -> Recipient:
    unsubscribe = f"https://course.test/u/token-{i}"
    return Recipient(
        email=f"reader{i}@example.com",
        name=f"Reader {i}",
        substitutions={"%%greeting%%": f"Hi Reader {i},", "%%greeting_html%%": f"Hi Reader {i},",
                       "%%click_0%%": f"https://course.test/c/click-{i}"},
        headers={"List-Unsubscribe": f"<{unsubscribe}>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        custom_args={"delivery_id": str(i)},
    )


@dataclass
class Delivered:
    peer: Any
    tls: bool
    login: bytes | None
    rcpt_tos: list[str]
    message: EmailMessage


class Recorder:
    """aiosmtpd handler: keeps what arrived, refuses or defers the addresses it is told to."""

    def __init__(self) -> None:
        self.delivered: list[Delivered] = []
        self.refuse: set[str] = set()
        self.defer_data: set[str] = set()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if set(envelope.rcpt_tos) & self.defer_data:
            return "451 4.3.0 Try again later"
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        login = session.auth_data.login if session.authenticated else None
        self.delivered.append(Delivered(session.peer, session.ssl is not None, login,
                                        list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 Message accepted"


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"mailer", b"s3cret")
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem), so STARTTLS can happen."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    folder: Path = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return folder


@pytest.fixture
def tls_context(tls_files: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files / "cert.pem", tls_files / "key.pem")
    return context


@pytest.fixture
def smtp_server() -> Iterator[Any]:
    """Starts a server with the given aiosmtpd options; yields (recorder, port)."""
    controllers: list[Controller] = []

    def start(**options: Any) -> tuple[Recorder, int]:
        recorder, port = Recorder(), free_port()
        controller = Controller(recorder, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return recorder, port

    yield start
    for controller in controllers:
        controller.stop()


def test_a_batch_is_one_connection_with_one_complete_message_per_recipient(smtp_server):
    server, port = smtp_server()
    backend = SMTPBackend("127.0.0.1", port, starttls=False, timeout=5)

    results = backend.send_batch(TEMPLATE, [recipient(i) for i in range(3)])

    assert [r.ok for r in results] == [True] * 3
    assert len({d.peer for d in server.delivered}) == 1  # one connection for the batch
    for i, (res, got) in enumerate(zip(results, server.delivered, strict=True)):
        msg = got.message
        assert got.rcpt_tos == [f"reader{i}@example.com"]
        assert msg["To"] == f"Reader {i} <reader{i}@example.com>"
        assert msg["Message-ID"].strip("<>") == res.message_id
        assert msg["List-Unsubscribe"] == f"<https://course.test/u/token-{i}>"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["X-Minicourse-Delivery-Id"] == str(i)
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        assert f"Read: https://course.test/c/click-{i}" in text
        assert f'href="https://course.test/c/click-{i}"' in html and f"Hi Reader {i}," in html


def test_each_batch_opens_its_own_connection(smtp_server):
    server, port = smtp_server()
    backend = SMTPBackend("127.0.0.1", port, starttls=False, timeout=5)

    backend.send_batch(TEMPLATE, [recipient(0)])
    backend.send_batch(TEMPLATE, [recipient(1)])

    assert len({d.peer for d in server.delivered}) == 2


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_logs_in_when_a_username_is_configured(smtp_server):
    server, port = smtp_server(authenticator=authenticate, auth_required=True,
                               auth_require_tls=False)
    backend = SMTPBackend("127.0.0.1", port, username="mailer", password="s3cret",
                          starttls=False, timeout=5)

    assert backend.send_batch(TEMPLATE, [recipient(0)])[0].ok
    assert server.delivered[0].login == b"mailer"


def test_starttls_comes_before_login_and_sending(smtp_server, tls_context, tls_files,
                                                monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files / "cert.pem"))  # trust the test cert
    server, port = smtp_server(tls_context=tls_context, require_starttls=True,
                               authenticator=authenticate, auth_required=True)
    backend = SMTPBackend("127.0.0.1", port, username="mailer", password="s3cret",
                          starttls=True, timeout=5)

    assert backend.send_batch(TEMPLATE, [recipient(0), recipient(1)])[1].ok
    assert [d.tls for d in server.delivered] == [True, True]
    assert server.delivered[0].login == b"mailer"


def test_connection_refused_is_transient():
    backend = SMTPBackend("127.0.0.1", free_port(), starttls=False, timeout=2)

    with pytest.raises(TransientError, match="cannot connect"):
        backend.send_batch(TEMPLATE, [recipient(0)])


def test_a_refused_recipient_fails_alone_and_the_others_are_sent(smtp_server):
    server, port = smtp_server()
    server.refuse.add("reader1@example.com")
    backend = SMTPBackend("127.0.0.1", port, starttls=False, timeout=5)

    results = backend.send_batch(TEMPLATE, [recipient(i) for i in range(3)])

    assert [r.ok for r in results] == [True, False, True]
    assert "550" in results[1].error
    assert [d.rcpt_tos for d in server.delivered] == [["reader0@example.com"],
                                                      ["reader2@example.com"]]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_refused_login_is_an_auth_error(smtp_server):
    server, port = smtp_server(authenticator=authenticate, auth_required=True,
                               auth_require_tls=False)
    backend = SMTPBackend("127.0.0.1", port, username="mailer", password="wrong",
                          starttls=False, timeout=5)

    with pytest.raises(AuthError):
        backend.send_batch(TEMPLATE, [recipient(0)])


def test_starttls_refuses_a_certificate_nobody_vouches_for(smtp_server, tls_context):
    server, port = smtp_server(tls_context=tls_context, require_starttls=True)
    backend = SMTPBackend("127.0.0.1", port, starttls=True, timeout=5)

    with pytest.raises(MailError):
        backend.send_batch(TEMPLATE, [recipient(0)])
    assert server.delivered == []


def test_a_deferral_mid_batch_still_reports_the_recipients_already_sent(smtp_server):
    server, port = smtp_server()
    server.defer_data.add("reader1@example.com")
    backend = SMTPBackend("127.0.0.1", port, starttls=False, timeout=5)

    try:
        first = backend.send_batch(TEMPLATE, [recipient(0), recipient(1)])[0]
    except MailError as exc:
        first = exc.result_for(0)  # type: ignore[assignment]
    assert first is not None and first.ok  # or the pipeline requeues it: a double send
