"""DKIM through the running gateway: outbound mail of a local domain is signed last and
verifies against the record ``mailgate keys dkim-generate`` printed; inbound mail gets one
Authentication-Results field (RFC 8601) with the result of its signatures, looked up in a
private DNS responder, and a field forged with our name is removed."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.dns import TxtServer
from tests.integration.harness import Gateway, Sink

USER, PASSWORD = "tran.hoa@example.gov.vn", "Ky-So-Thu-2026"
HOST = "mx.example.gov.vn"


@pytest.fixture
def dns_server() -> Iterator[TxtServer]:
    server = TxtServer().start()
    yield server
    server.stop()


def signing_gateway(make_gateway, sink: Sink, dns_server: TxtServer, **dkim: str) -> Gateway:  # type: ignore[no-untyped-def]
    gateway = make_gateway(sink.url, sink.url)
    sections: dict[str, dict[str, object]] = {
        "signing": {"dns_resolver": f"127.0.0.1:{dns_server.port}", "dns_timeout": 1}
    }
    if dkim:
        sections["signing.dkim"] = dict(dkim)
    gateway.add_sections(sections)
    gateway.cli("mailbox", "add", USER, "--name", "Trần Hoa", "--password", PASSWORD)
    return gateway


def record_value(printed: str) -> bytes:
    """The TXT value a resolver returns for the line ``keys dkim-generate`` printed."""
    strings = printed.split(" IN TXT ", 1)[1].strip()
    return "".join(piece.strip().strip('"') for piece in strings.split('" "')).encode()


def submit(gateway: Gateway, body: str = "Kính gửi anh chị,\nNội dung công văn.\n") -> None:
    message = EmailMessage()
    message["From"], message["To"] = USER, "doitac@other.org"
    message["Subject"] = "Báo cáo tuần"
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", gateway.submission_port, timeout=30) as client:
        client.login(USER, PASSWORD)
        client.send_message(message)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_outbound_mail_is_signed_and_verifies_against_the_printed_record(
    make_gateway, sink: Sink, dns_server: TxtServer, algorithm: str
) -> None:  # type: ignore[no-untyped-def]
    gateway = signing_gateway(make_gateway, sink, dns_server, selector="mail")
    printed = gateway.cli(
        "keys", "dkim-generate", "example.gov.vn", "--algorithm", algorithm
    ).stdout.strip()
    assert printed.startswith("mail._domainkey.example.gov.vn. IN TXT ")
    assert printed == gateway.cli("keys", "dkim-record", "example.gov.vn").stdout.strip()
    gateway.start()
    submit(gateway)
    (received,) = sink.wait_messages(1)
    assert received.data.startswith(b"DKIM-Signature: v=1; a=" + (
        b"rsa-sha256" if algorithm == "rsa" else b"ed25519-sha256"
    ))  # fmt: skip
    value = record_value(printed)
    assert dkimpy.verify(received.data, dnsfunc=lambda name, timeout=5: value)
    tampered = received.data.replace("Nội dung".encode(), b"Noi dung")
    if tampered == received.data:  # the body went out base64: change a header instead
        tampered = received.data.replace(b"Subject: ", b"Subject: X", 1)
    assert not dkimpy.verify(tampered, dnsfunc=lambda name, timeout=5: value)
    event = gateway.wait_event("message_transformed", lambda e: "[dkim]" in e["reason"])
    assert "d=example.gov.vn s=mail" in event["reason"]
    assert "PRIVATE" not in gateway.all_logs()


def test_a_key_made_while_serving_signs_the_next_message(
    make_gateway, sink: Sink, dns_server: TxtServer
) -> None:  # type: ignore[no-untyped-def]
    gateway = signing_gateway(make_gateway, sink, dns_server, selector="mail").start()
    submit(gateway)
    gateway.cli("keys", "dkim-generate", "example.gov.vn")
    submit(gateway)
    first, second = sink.wait_messages(2)
    assert b"DKIM-Signature" not in first.data
    assert second.data.startswith(b"DKIM-Signature: ")


def test_an_unusable_key_gives_451_never_unsigned_mail(
    make_gateway, sink: Sink, dns_server: TxtServer
) -> None:  # type: ignore[no-untyped-def]
    gateway = signing_gateway(make_gateway, sink, dns_server, selector="mail")
    gateway.cli("keys", "dkim-generate", "example.gov.vn")
    key_file = gateway.workdir / "var" / "keys" / "dkim" / "example.gov.vn" / "mail.pem"
    key_file.write_bytes(b"not a key\n")
    gateway.start()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(gateway)
    assert refused.value.smtp_code == 451 and b"[dkim]" in refused.value.smtp_error
    assert sink.messages == []
    gateway.wait_event("message_tempfailed", lambda e: "[dkim]" in e["reason"])


def signed_by_other(key: rsa.RSAPrivateKey, body: bytes = b"Xin chao.\r\n") -> bytes:
    message = (
        b"From: partner@other.gov.vn\r\nTo: bob@example.gov.vn\r\nSubject: Thu moi\r\n"
        b"Date: Mon, 07 Dec 2026 10:00:00 +0700\r\nMessage-ID: <m1@other.gov.vn>\r\n"
        b"Authentication-Results: " + HOST.encode() + b"; dkim=pass header.d=forged.vn\r\n"
        b"Authentication-Results: relay.other.gov.vn; spf=pass\r\n\r\n" + body
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return dkimpy.sign(message, b"sel", b"other.gov.vn", pem) + message


def send_inbound(gateway: Gateway, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port, timeout=30) as client:
        client.sendmail("partner@other.gov.vn", ["bob@example.gov.vn"], data)


def results_field(data: bytes) -> bytes:
    """Our Authentication-Results field (unfolded), which must be the first field."""
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"Authentication-Results: " + HOST.encode() + b";")
    return head.split(b"\r\n")[0] + b" " + head.split(b"\r\n")[1].strip()


def test_inbound_results_pass_fail_and_temperror(
    make_gateway, sink: Sink, dns_server: TxtServer
) -> None:  # type: ignore[no-untyped-def]
    key = rsa.generate_private_key(65537, 2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    dns_server.add("sel._domainkey.other.gov.vn", b"v=DKIM1; k=rsa; p=" + base64.b64encode(public))
    gateway = signing_gateway(make_gateway, sink, dns_server).start()
    good = signed_by_other(key)
    send_inbound(gateway, good)
    send_inbound(gateway, good.replace(b"Xin chao.", b"Xin chao!"))
    send_inbound(gateway, b"From: a@other.org\r\nSubject: x\r\n\r\nplain\r\n")
    dns_server.silent = True
    send_inbound(gateway, good)  # the key cannot be looked up: temperror, still delivered
    passed, failed, unsigned, unknown = sink.wait_messages(4)
    assert b"dkim=pass header.d=other.gov.vn header.s=sel" in results_field(passed.data)
    assert b"dkim=fail" in results_field(failed.data)
    assert b"dkim=none" in results_field(unsigned.data)
    assert b"dkim=temperror" in results_field(unknown.data)
    for message in (passed, failed, unknown):
        head = message.data.split(b"\r\n\r\n", 1)[0]
        assert head.count(b"Authentication-Results: " + HOST.encode()) == 1  # forged one gone
        assert b"Authentication-Results: relay.other.gov.vn; spf=pass" in head  # others kept
        assert b"forged.vn" not in head
