"""The private Dovecot the integration tests deliver to must behave like production's.

Checks the helper itself: LMTP accepts known users and refuses unknown ones at RCPT, IMAP
returns the delivered bytes, and the master-user login the IMAP proxy relies on works.
"""

from __future__ import annotations

import imaplib
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dovecot import PrivateDovecot

pytestmark = pytest.mark.integration

ALICE = "alice@example.gov.vn"
ALICE_PASSWORD = "s3cret pass#1"


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[PrivateDovecot]:
    with PrivateDovecot(tmp_path / "dovecot", {ALICE: ALICE_PASSWORD}) as server:
        yield server


def test_lmtp_delivery_reads_back_over_imap(dovecot: PrivateDovecot) -> None:
    body = b"Kinh gui anh chi,\r\nbody line with unique token 7f3a9c\r\n"
    message = (
        b"From: sender@example.org\r\n"
        b"To: " + ALICE.encode() + b"\r\n"
        b"Subject: fixture check\r\n"
        b"Message-ID: <fixture-check@example.org>\r\n"
        b"\r\n" + body
    )
    with smtplib.LMTP(dovecot.host, dovecot.lmtp_port, timeout=10) as lmtp:
        assert lmtp.ehlo("test.example.org")[0] == 250  # smtplib.LMTP sends LHLO
        assert lmtp.mail("sender@example.org")[0] == 250
        code, reply = lmtp.rcpt("nobody@example.gov.vn")
        assert code == 550, reply
        assert reply.startswith(b"5.1.1"), reply
        assert lmtp.rcpt(ALICE)[0] == 250
        code, reply = lmtp.data(message)
        assert code == 250, reply

    messages = dovecot.fetch_messages(ALICE, ALICE_PASSWORD)
    assert len(messages) == 1
    headers, _, delivered_body = messages[0].partition(b"\r\n\r\n")
    assert delivered_body == body
    assert b"Message-ID: <fixture-check@example.org>" in headers
    # Dovecot adds its own trace headers on top of ours.
    assert f"Delivered-To: {ALICE}".encode() in headers


def test_master_user_login(dovecot: PrivateDovecot) -> None:
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10) as imap:
        typ, _ = imap.login(f"{ALICE}*{dovecot.master_user}", dovecot.master_password)
        assert typ == "OK"
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK", data
        imap.logout()
    with (
        imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10) as imap,
        pytest.raises(imaplib.IMAP4.error),
    ):
        imap.login(f"{ALICE}*{dovecot.master_user}", "wrong password")


def test_add_user_without_restart(dovecot: PrivateDovecot) -> None:
    bob = "bob@example.gov.vn"
    with smtplib.LMTP(dovecot.host, dovecot.lmtp_port, timeout=10) as lmtp:
        lmtp.ehlo("test.example.org")
        lmtp.mail("sender@example.org")
        assert lmtp.rcpt(bob)[0] == 550
    dovecot.add_user(bob, "bob-pass")
    with smtplib.LMTP(dovecot.host, dovecot.lmtp_port, timeout=10) as lmtp:
        assert lmtp.sendmail("sender@example.org", [bob], b"Subject: hi\r\n\r\nhi\r\n") == {}
    assert len(dovecot.fetch_messages(bob, "bob-pass")) == 1
