"""The submission listener: TLS, AUTH before MAIL, and AUTH before TLS refused."""

from __future__ import annotations

import base64
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest

from gateway.smtp import replies
from gateway.tls import write_self_signed
from tests.integration.harness import Gateway, Sink, free_port

USER, PASSWORD = "bich.ngoc@example.gov.vn", "Giay-phep-9x"
MESSAGE = b"From: bich.ngoc@example.gov.vn\r\nSubject: s\r\n\r\nhi\r\n"


@pytest.fixture
def tls_gateway(make_gateway, sink: Sink, tmp_path: Path) -> Gateway:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "mx.example.gov.vn")
    gateway = make_gateway(
        sink.url,
        sink.url,
        smtp_extra={
            "require_tls_for_auth": True,
            "tls_cert": str(cert),
            "tls_key": str(key),
            "submission_tls_listen": f"127.0.0.1:{free_port()}",
        },
    )
    gateway.cli("mailbox", "add", USER, "--name", "Lê Bích Ngọc", "--password", PASSWORD)
    return gateway.start()


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def implicit_port(gateway: Gateway) -> int:
    return int(gateway.sections()["smtp"]["submission_tls_listen"].rsplit(":", 1)[1])


def test_mail_before_auth_is_refused(tls_gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", tls_gateway.submission_port) as client:
        client.ehlo("client.test")
        code, text = client.mail(USER)
        assert code == replies.AUTH_REQUIRED.code
        assert text.decode().startswith(f"{replies.AUTH_REQUIRED.status} ")
        assert "[auth]" in text.decode()


def test_auth_before_tls_is_refused(tls_gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", tls_gateway.submission_port) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth"), "AUTH is not offered before TLS"
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        code, _ = client.docmd("AUTH", f"PLAIN {token}")
        assert code == replies.AUTH_NEEDS_TLS.code


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_then_auth_then_relay(tls_gateway: Gateway, sink: Sink, mechanism: str) -> None:
    with smtplib.SMTP("127.0.0.1", tls_gateway.submission_port) as client:
        client.starttls(context=client_context())
        client.ehlo("client.test")
        assert mechanism in client.esmtp_features["auth"]
        client.user, client.password = USER, PASSWORD
        code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235
        client.sendmail(USER, ["partner@other.org"], MESSAGE)
    [received] = sink.wait_messages(1)
    assert received.recipients == ["partner@other.org"]
    header = received.data.split(b"\r\n\r\n")[0]
    assert b"with ESMTPSA" in header, "RFC 3848: TLS and AUTH recorded in Received"
    event = tls_gateway.wait_event("auth_success")
    assert event["user"] == USER and event["mechanism"] == mechanism
    assert tls_gateway.wait_event("message_accepted")["user"] == USER


def test_wrong_password_is_535_and_logged_without_the_password(tls_gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", tls_gateway.submission_port) as client:
        client.starttls(context=client_context())
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            client.login(USER, "Sai-mat-khau-1")
        assert failure.value.smtp_code == 535
        assert b"[auth]" in failure.value.smtp_error
    event = tls_gateway.wait_event("auth_failure")
    assert event["user"] == USER
    tls_gateway.stop()  # everything the process printed is now in serve.log
    wrong = "Sai-mat-khau-1"
    tokens = [
        base64.b64encode(f"\0{USER}\0{wrong}".encode()),  # AUTH PLAIN's one token
        base64.b64encode(wrong.encode()),  # AUTH LOGIN's password line
    ]
    log_bytes = b"".join(p.read_bytes() for p in tls_gateway.log_dir.glob("*.jsonl"))
    printed = (tls_gateway.workdir / "serve.log").read_bytes()
    for text in (log_bytes, printed):
        assert wrong.encode() not in text and PASSWORD.encode() not in text
        assert not any(token in text for token in tokens)


def test_implicit_tls_listener(tls_gateway: Gateway, sink: Sink) -> None:
    port = implicit_port(tls_gateway)
    with smtplib.SMTP_SSL("127.0.0.1", port, context=client_context()) as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        client.login(USER, PASSWORD)
        client.sendmail(USER, ["bob@example.gov.vn"], MESSAGE)
    assert sink.wait_messages(1)[0].recipients == ["bob@example.gov.vn"]


def test_swaks_submission_with_starttls_and_auth(tls_gateway: Gateway, sink: Sink) -> None:
    result = subprocess.run(
        [
            "swaks", "--server", f"127.0.0.1:{tls_gateway.submission_port}", "--tls",
            "--auth", "LOGIN", "--auth-user", USER, "--auth-password", PASSWORD,
            "--from", USER, "--to", "partner@other.org",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert sink.wait_messages(1)[0].recipients == ["partner@other.org"]


def test_from_header_is_checked_on_the_implicit_tls_listener_too(
    tls_gateway: Gateway, sink: Sink
) -> None:
    """The implicit-TLS listener has its own name in events; the From: rule must not
    mistake it for inbound mail and let a forged From: through."""
    forged = b"From: someone.else@example.gov.vn\r\nSubject: s\r\n\r\nhi\r\n"
    port = implicit_port(tls_gateway)
    with smtplib.SMTP_SSL("127.0.0.1", port, context=client_context()) as client:
        client.login(USER, PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(USER, ["bob@example.gov.vn"], forged)
    assert refused.value.smtp_code == 550 and b"[sender_identity]" in refused.value.smtp_error
    assert sink.messages == []
