"""The directory's rules as a mail client meets them, over SMTP on a running gateway."""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime

import pytest

from gateway.directory.mailboxes import Directory
from gateway.smtp import replies
from tests.integration.harness import Gateway, Sink

AN, AN_PW = "nvan@example.gov.vn", "An-Matkhau-2026"
BINH, BINH_PW = "ttbinh@example.gov.vn", "Binh-Matkhau-2026"
UNIT = "cntt@example.gov.vn"


@pytest.fixture
def gateway(make_gateway, sink: Sink) -> Gateway:
    gateway = make_gateway(sink.url, sink.url, smtp_extra={}, mailboxes=())
    gateway.cli("unit", "add", "CNTT", "--name", "Trung tâm Công nghệ thông tin")
    gateway.cli("mailbox", "add", AN, "--name", "Nguyễn Văn An", "--unit", "CNTT",
                "--password", AN_PW)  # fmt: skip
    gateway.cli("mailbox", "add", BINH, "--name", "Trần Thị Bình", "--password", BINH_PW)
    gateway.cli("mailbox", "add", UNIT, "--name", "Trung tâm CNTT", "--kind", "unit",
                "--unit", "CNTT", "--password", "Unit-Matkhau-2026")  # fmt: skip
    gateway.add_recipients("bob@example.gov.vn")
    return gateway.start()


def message(sender: str, subject: str = "test") -> bytes:
    return f"From: {sender}\r\nTo: bob@example.gov.vn\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()


def login(gateway: Gateway, user: str, password: str) -> smtplib.SMTP:
    """AUTH PLAIN once (smtplib's login() would retry with LOGIN after a 535)."""
    client = smtplib.SMTP("127.0.0.1", gateway.submission_port, timeout=30)
    client.ehlo("client.test")
    client.user, client.password = user, password
    try:
        client.auth("PLAIN", client.auth_plain)
    except smtplib.SMTPAuthenticationError:
        client.close()
        raise
    return client


def mailbox_state(gateway: Gateway, address: str) -> tuple[str, str | None]:
    directory = Directory.for_data_dir(gateway.workdir / "var")
    try:
        mailbox = directory.require(address)
        return mailbox.state, mailbox.last_access
    finally:
        directory.close()


def test_login_records_last_access_and_relays(gateway: Gateway, sink: Sink) -> None:
    assert mailbox_state(gateway, AN)[1] is None
    with login(gateway, AN, AN_PW) as client:
        client.sendmail(AN, ["partner@other.org"], message(AN))
    assert sink.wait_messages(1)[0].recipients == ["partner@other.org"]
    assert mailbox_state(gateway, AN)[1] is not None, "MOST 13.3 counts from the last access"


def test_locked_mailbox_cannot_log_in_but_still_receives(gateway: Gateway, sink: Sink) -> None:
    gateway.cli("mailbox", "lock", AN, "--reason", "mật khẩu bị lộ")
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        login(gateway, AN, AN_PW)
    assert refused.value.smtp_code == 535
    event = gateway.wait_event("auth_failure")
    assert (
        event["user"] == AN and "locked" in event["reason"] and "mật khẩu bị lộ" in event["reason"]
    )
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.sendmail("x@other.org", [AN], message("x@other.org"))
    assert sink.wait_messages(1)[0].recipients == [AN], "MIC 7.1: a locked mailbox receives"


def test_a_staff_mailbox_retired_today_cannot_send_at_once(gateway: Gateway, sink: Sink) -> None:
    """No maintenance run in between: the departure's date decides at MAIL FROM (MIC
    6.4.c), as it does at AUTH. Before, it kept sending until the next maintenance."""
    today = datetime.now(UTC).date().isoformat()
    gateway.cli("mailbox", "retire", AN, "--on", today)
    with login(gateway, AN, AN_PW) as client:  # send-locked mailboxes may still log in
        code, text = client.mail(AN)
    assert code == replies.SENDING_LOCKED.code
    assert "[send_lock]" in text.decode() and "send-locked" in text.decode()
    assert sink.messages == []
    assert gateway.cli("mailbox", "show", AN, "--json").stdout.count('"state": "active"') == 1


def test_a_delegated_unit_mailbox_retired_today_is_no_longer_a_sender(
    gateway: Gateway, sink: Sink
) -> None:
    """The delegate keeps its own identity, but neither MAIL FROM nor From: may name a unit
    mailbox whose departure deadline has passed (the same effective state as a login)."""
    gateway.cli("mailbox", "delegate", UNIT, AN)
    with login(gateway, AN, AN_PW) as client:
        client.sendmail(UNIT, ["partner@other.org"], message(UNIT))
        assert len(sink.wait_messages(1)) == 1
        gateway.cli("mailbox", "retire", UNIT, "--on", datetime.now(UTC).date().isoformat())
        code, text = client.mail(UNIT)
        assert code == replies.SENDER_NOT_ALLOWED.code and "[sender_identity]" in text.decode()
        client.rset()
        client.mail(AN)
        client.rcpt("partner@other.org")
        code, text = client.data(message(UNIT))  # the From: header is held to it too
        assert code == replies.SENDER_NOT_ALLOWED.code and "[sender_identity]" in text.decode()
    assert len(sink.messages) == 1


def test_send_locked_mailbox_logs_in_but_cannot_send(gateway: Gateway, sink: Sink) -> None:
    gateway.cli("mailbox", "lock", AN, "--reason", "nghỉ hưu", "--send-only")
    with login(gateway, AN, AN_PW) as client:
        code, text = client.mail(AN)
    assert code == replies.SENDING_LOCKED.code
    assert text.decode().startswith(replies.SENDING_LOCKED.status)
    # ASCII for a client that did not ask for SMTPUTF8; the event keeps the real words.
    assert "[send_lock]" in text.decode() and "nghi huu" in text.decode()
    event = gateway.wait_event("mail_rejected")
    assert "[send_lock]" in event["reason"] and event["user"] == AN
    assert "nghỉ hưu" in event["reason"]
    with login(gateway, AN, AN_PW) as client:
        code, text = client.mail(AN, ["SMTPUTF8"])
    assert code == replies.SENDING_LOCKED.code and "nghỉ hưu" in text.decode()


def test_revoked_and_unknown_recipients_are_refused_at_rcpt(gateway: Gateway) -> None:
    gateway.cli("mailbox", "revoke", BINH)
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.ehlo("client.test")
        client.mail("x@other.org")
        for address in (BINH, "nobody.here@example.gov.vn"):
            code, text = client.rcpt(address)
            assert code == replies.NO_SUCH_USER.code and text.startswith(b"5.1.1"), address
            assert b"[directory]" in text
        assert client.rcpt("bob@example.gov.vn")[0] == 250


def test_sender_must_be_the_login_or_a_delegated_unit(gateway: Gateway, sink: Sink) -> None:
    with login(gateway, AN, AN_PW) as client:
        code, text = client.mail(BINH)
        assert code == 550 and b"[sender_identity]" in text
        client.rset()
        code, _ = client.mail(UNIT)
        assert code == 550, "not delegated yet"
    gateway.cli("mailbox", "delegate", UNIT, AN)
    with login(gateway, AN, AN_PW) as client:
        client.sendmail(UNIT, ["bob@example.gov.vn"], message(UNIT, "as the unit"))
    received = sink.wait_messages(1)[0]
    assert b"Subject: as the unit" in received.data
    assert gateway.wait_event("delegation_changed")["delegate"] == AN


def test_from_header_must_match_too(gateway: Gateway, sink: Sink) -> None:
    with login(gateway, AN, AN_PW) as client:
        client.mail(AN)
        client.rcpt("bob@example.gov.vn")
        code, text = client.data(message(f"Trần Thị Bình <{BINH}>"))
    assert code == 550 and b"[sender_identity]" in text and BINH.encode() in text
    event = gateway.wait_event("message_rejected")
    assert "[sender_identity]" in event["reason"] and event["user"] == AN
    assert sink.messages == []  # refused before any delivery was tried


def test_failed_logins_are_throttled_per_address(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url, mailboxes=())
    gateway.cli("mailbox", "add", AN, "--name", "Nguyễn Văn An", "--password", AN_PW)
    gateway.write_config(
        gateway.config_path.read_text()
        + "\n[auth]\nmax_failures_per_address = 3\nfailure_window_seconds = 60\n"
    )
    gateway.start()
    for _ in range(3):
        with pytest.raises(smtplib.SMTPAuthenticationError):
            login(gateway, AN, "Sai-mat-khau-1")
    with pytest.raises(smtplib.SMTPAuthenticationError) as throttled:
        login(gateway, AN, AN_PW)  # the right password, but too soon
    assert throttled.value.smtp_code == replies.AUTH_THROTTLED.code
    assert b"[auth_throttle]" in throttled.value.smtp_error
    failures = gateway.events("auth_failure")
    assert len(failures) == 4 and "too many failed logins" in failures[-1]["reason"]
    with smtplib.SMTP("127.0.0.1", gateway.submission_port) as other:
        assert other.noop()[0] == 250, "the server keeps serving"


def test_must_change_does_not_block_smtp_auth(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url, mailboxes=())
    created = gateway.cli("mailbox", "add", AN, "--name", "Nguyễn Văn An").stdout
    password = created.rsplit(": ", 1)[1].strip()
    gateway.start()
    with login(gateway, AN, password) as client:
        assert client.noop()[0] == 250
    assert gateway.wait_event("auth_success")["must_change"] is True


def test_a_change_by_the_cli_applies_to_the_next_command_of_an_open_session(
    gateway: Gateway, sink: Sink
) -> None:
    """What serve remembers of the directory (the sender's standing, accepted recipients)
    is dropped as soon as another process commits: a lock stops the very next MAIL FROM of
    a session already logged in, and a revocation the next RCPT, with no wait."""
    with login(gateway, AN, AN_PW) as client:
        client.sendmail(AN, [BINH], message(AN))
        gateway.cli("mailbox", "lock", AN, "--reason", "mật khẩu bị lộ", "--send-only")
        code, text = client.mail(AN)
        assert code == replies.SENDING_LOCKED.code and "[send_lock]" in text.decode()
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.sendmail("x@other.org", [BINH], message("x@other.org"))
        gateway.cli("mailbox", "revoke", BINH)
        client.mail("x@other.org")
        code, text = client.rcpt(BINH)
        assert code == 550 and "[directory]" in text.decode()
    assert [m.recipients for m in sink.wait_messages(2)] == [[BINH], [BINH]]


def test_a_from_field_with_a_blank_before_its_colon_is_held_to_the_login(
    gateway: Gateway, sink: Sink
) -> None:
    """``From :`` (RFC 5322's obsolete syntax, which mail readers still show) is a From
    field too: a second, spaced one naming a colleague must not pass beside the real one."""
    forged = (
        f"From : {BINH}\r\nFrom: {AN}\r\nTo: bob@example.gov.vn\r\nSubject: x\r\n\r\nhi\r\n"
    ).encode()
    with login(gateway, AN, AN_PW) as client:
        client.mail(AN)
        client.rcpt("partner@other.org")
        code, text = client.data(forged)
    assert code == replies.SENDER_NOT_ALLOWED.code and "[sender_identity]" in text.decode()
    assert BINH in text.decode() and sink.messages == []
