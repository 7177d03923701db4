"""msmtp on both submission listeners: a message without Date: or Message-ID: gets both
(RFC 6409 8.2, 8.3), its event carries the Message-ID, and each listener names itself."""

from __future__ import annotations

import re
import subprocess
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.integration.harness import Gateway, Sink, TLSFiles, make_tls_files

USER, PASSWORD = "bich.ngoc@example.gov.vn", "Giay-phep-9x"
# No Date:, no Message-ID: the gateway adds both.
MESSAGE = (
    b"From: bich.ngoc@example.gov.vn\r\n"
    b"To: bob@example.gov.vn\r\n"
    b"Subject: =?utf-8?b?QsOhbyBjw6Fv?=\r\n"
    b"\r\n"
    b"Xin chao\r\n"
)


@pytest.fixture
def tls(tmp_path: Path) -> TLSFiles:
    return make_tls_files(tmp_path)


@pytest.fixture
def tls_gateway(make_gateway, sink: Sink, tls: TLSFiles) -> Gateway:
    gateway = make_gateway(sink.url, sink.url, smtp_extra=tls.smtp_extra())
    gateway.cli("mailbox", "add", USER, "--name", "Lê Bích Ngọc", "--password", PASSWORD)
    return gateway.start()


def msmtp(
    tmp_path: Path, tls: TLSFiles, port: int, starttls: bool, message: bytes = MESSAGE
) -> None:
    """Send ``message`` with msmtp, told to add no header field of its own (msmtp 1.8
    adds Date: and Message-ID: by default)."""
    config = tmp_path / "msmtprc"
    config.write_text(
        "\n".join(
            [
                "account default",
                "host 127.0.0.1",
                f"port {port}",
                "domain client.test",
                "tls on",
                f"tls_starttls {'on' if starttls else 'off'}",
                f"tls_trust_file {tls.ca}",
                "auth plain",
                f"user {USER}",
                f"password {PASSWORD}",
                f"from {USER}",
                "set_from_header off",
                "set_date_header off",
                "set_msgid_header off",
                "",
            ]
        )
    )
    config.chmod(0o600)  # msmtp refuses a config with a password others may read
    result = subprocess.run(
        ["msmtp", "--file", str(config), "bob@example.gov.vn"],
        input=message,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")


@pytest.mark.parametrize(("listener", "starttls"), [("submission", True), ("submissions", False)])
def test_msmtp_gets_date_and_message_id_added(
    tls_gateway: Gateway, sink: Sink, tls: TLSFiles, tmp_path: Path, listener: str, starttls: bool
) -> None:
    port = tls_gateway.submission_port if starttls else tls_gateway.implicit_tls_port
    msmtp(tmp_path, tls, port, starttls)
    [received] = sink.wait_messages(1)
    assert received.recipients == ["bob@example.gov.vn"]
    headers, _, body = received.data.partition(b"\r\n\r\n")
    assert body == MESSAGE.partition(b"\r\n\r\n")[2]
    fields = headers.decode().replace("\r\n\t", " ").replace("\r\n ", " ").split("\r\n")
    dates = [f for f in fields if f.lower().startswith("date:")]
    ids = [f for f in fields if f.lower().startswith("message-id:")]
    assert len(dates) == 1 and len(ids) == 1, fields
    assert parsedate_to_datetime(dates[0].split(":", 1)[1].strip()).tzinfo is not None
    message_id = ids[0].split(":", 1)[1].strip()
    assert re.fullmatch(r"<[^<>@\s]+@mx\.example\.gov\.vn>", message_id), message_id
    assert "with ESMTPSA" in headers.decode(), "TLS and AUTH recorded in Received"

    accepted = tls_gateway.wait_event("message_accepted")
    assert accepted["listener"] == listener
    assert accepted["message_id"] == message_id
    assert accepted["user"] == USER
    session_events = [e for e in tls_gateway.events() if e.get("session") == accepted["session"]]
    assert {e["event"] for e in session_events} >= {"session_start", "auth_success"}
    assert {e["listener"] for e in session_events} == {listener}


def test_existing_date_and_message_id_are_kept(
    tls_gateway: Gateway, sink: Sink, tls: TLSFiles, tmp_path: Path
) -> None:
    dated = b"Date: Tue, 24 Nov 2026 09:00:00 +0700\r\nMessage-ID: <bc-11@client.test>\r\n"
    msmtp(tmp_path, tls, tls_gateway.submission_port, starttls=True, message=dated + MESSAGE)
    headers = sink.wait_messages(1)[0].data.partition(b"\r\n\r\n")[0].lower()
    assert headers.count(b"\r\ndate:") == 1 and headers.count(b"\r\nmessage-id:") == 1
    assert tls_gateway.wait_event("message_accepted")["message_id"] == "<bc-11@client.test>"
