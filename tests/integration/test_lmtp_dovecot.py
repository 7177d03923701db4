"""Delivery to the real mail store: gateway -> LMTP -> Dovecot -> read back over IMAP."""

from __future__ import annotations

import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dovecot import PrivateDovecot
from tests.integration.harness import Gateway, Sink

ALICE, BOB = "alice@example.gov.vn", "bob@example.gov.vn"
PASSWORDS = {ALICE: "Alice-pass-1", BOB: "Bob-pass-22"}


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDovecot]:
    with PrivateDovecot(tmp_path_factory.mktemp("dovecot"), PASSWORDS) as server:
        yield server


@pytest.fixture
def lmtp_gateway(make_gateway, dovecot: PrivateDovecot, sink: Sink) -> Gateway:
    return make_gateway(f"lmtp://127.0.0.1:{dovecot.lmtp_port}", sink.url).start()


def wait_for_mail(dovecot: PrivateDovecot, address: str, count: int) -> list[bytes]:
    deadline = time.monotonic() + 10
    while True:
        messages = dovecot.fetch_messages(address, PASSWORDS[address])
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        time.sleep(0.1)


def test_smtplib_to_dovecot_reads_back_identical_body(
    lmtp_gateway: Gateway, dovecot: PrivateDovecot
) -> None:
    before = len(dovecot.fetch_messages(ALICE, PASSWORDS[ALICE]))
    body = (
        "From: =?utf-8?b?xJDhu5cgVsSDbiBCw6o=?= <dvbe@other.gov.vn>\r\n"
        "To: alice@example.gov.vn\r\nSubject: =?utf-8?q?C=C3=B4ng_v=C4=83n?=\r\n"
        "Message-ID: <lmtp-1@other.gov.vn>\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "\r\nKính gửi chị Alice,\r\n.leading dot survives\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", lmtp_gateway.inbound_port) as client:
        client.sendmail("dvbe@other.gov.vn", [ALICE], body)
    messages = wait_for_mail(dovecot, ALICE, before + 1)
    assert len(messages) == before + 1
    stored = messages[-1]
    assert stored.endswith(body), "Dovecot adds headers on top; the message itself is intact"
    assert b"by mx.example.gov.vn (mailgate)" in stored
    event = lmtp_gateway.wait_event("delivered")
    assert event["next_hop"] == f"lmtp://127.0.0.1:{dovecot.lmtp_port}"
    assert event["message_id"] == "<lmtp-1@other.gov.vn>"


def test_lmtp_per_recipient_results(
    lmtp_gateway: Gateway, dovecot: PrivateDovecot, sink: Sink
) -> None:
    """One known and one unknown user: 250 to the sender, mail for the known one, a DSN."""
    before = len(dovecot.fetch_messages(BOB, PASSWORDS[BOB]))
    with smtplib.SMTP("127.0.0.1", lmtp_gateway.inbound_port) as client:
        client.ehlo("client.test")
        client.mail("sender@other.org")
        client.rcpt(BOB)
        client.rcpt("ghost@example.gov.vn")
        code, _ = client.data(b"Subject: two\r\n\r\nfor bob and a ghost\r\n")
    assert code == 250
    assert len(wait_for_mail(dovecot, BOB, before + 1)) == before + 1
    [dsn] = sink.wait_messages(1)  # the sender is foreign: the DSN goes outbound
    assert dsn.recipients == ["sender@other.org"]
    assert b"Final-Recipient: rfc822; ghost@example.gov.vn" in dsn.data
    assert b"Status: 5.1.1" in dsn.data


def test_swaks_through_gateway_to_dovecot(lmtp_gateway: Gateway, dovecot: PrivateDovecot) -> None:
    before = len(dovecot.fetch_messages(ALICE, PASSWORDS[ALICE]))
    result = subprocess.run(
        [
            "swaks", "--server", f"127.0.0.1:{lmtp_gateway.inbound_port}",
            "--from", "x@other.org", "--to", ALICE, "--header", "Subject: swaks-lmtp",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    messages = wait_for_mail(dovecot, ALICE, before + 1)
    assert b"Subject: swaks-lmtp" in messages[-1]


def test_dovecot_down_then_up_loses_nothing(make_gateway, tmp_path: Path, sink: Sink) -> None:
    """The store stops mid-stream: the gateway answers 4xx; after restart mail flows again."""
    store = PrivateDovecot(tmp_path / "store", PASSWORDS).start()
    gateway = make_gateway(f"lmtp://127.0.0.1:{store.lmtp_port}", sink.url).start()
    try:
        with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
            client.sendmail("x@other.org", [ALICE], b"Subject: one\r\n\r\n1\r\n")
        store.stop()
        with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
            client.ehlo("client.test")
            client.mail("x@other.org")
            client.rcpt(ALICE)
            code, _ = client.data(b"Subject: two\r\n\r\n2\r\n")
        assert code == 451
        store.start()
        # Dovecot picks new ports on restart: point the gateway at them, as an operator would.
        gateway.local = f"lmtp://127.0.0.1:{store.lmtp_port}"
        gateway.write_config()
        gateway.signal(signal.SIGHUP)
        gateway.wait_event("config_reloaded")
        with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
            client.sendmail("x@other.org", [ALICE], b"Subject: two\r\n\r\n2\r\n")
        subjects = [m.split(b"Subject: ")[1][:3] for m in wait_for_mail(store, ALICE, 2)]
        assert subjects == [b"one", b"two"]
    finally:
        store.stop()
