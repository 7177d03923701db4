"""A real Postfix relays into the inbound listener: 8-bit and UTF-8 mail arrives byte-exact."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Gateway, PrivatePostfix, Sink

SUBJECT = "Subject: Báo cáo tháng 11 – Sở Thông tin và Truyền thông".encode()
# 8-bit UTF-8 text, a dot-leading line (dot-stuffing both ways) and an empty line.
BODY = (
    "Kính gửi anh Bình,\r\n"
    "\r\n"
    "Đây là nội dung 8-bit: Tiếng Việt có dấu, không mã hoá lại.\r\n"
    ".dòng này bắt đầu bằng dấu chấm\r\n"
    "Trân trọng,\r\n"
    "Nguyễn Văn An\r\n"
).encode()
MESSAGE = (
    b"From: Nguyen Van An <an@other.org>\r\n"
    b"To: bob@example.gov.vn\r\n" + SUBJECT + b"\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n" + BODY
)


@pytest.fixture
def postfix_root() -> Iterator[Path]:
    """Postfix's unprivileged processes must reach the queue and data folders, and
    pytest's base temporary folder is 0700; so this instance lives in /tmp."""
    root = Path(tempfile.mkdtemp(prefix="mailgate-postfix-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="a Postfix master must run as root")
def test_postfix_relays_8bit_utf8_mail_byte_exact(
    make_gateway, sink: Sink, postfix_root: Path, tmp_path: Path
) -> None:
    gateway: Gateway = make_gateway(sink.url, sink.url).start()
    postfix = PrivatePostfix(postfix_root, f"[127.0.0.1]:{gateway.inbound_port}")
    try:
        postfix.start()
        message_file = tmp_path / "message.eml"
        # swaks ends DATA with "\r\n.\r\n" after the file: leave the last CRLF to it.
        message_file.write_bytes(MESSAGE.removesuffix(b"\r\n"))
        result = subprocess.run(
            [
                "swaks", "--server", f"127.0.0.1:{postfix.port}", "--helo", "client.test",
                "--from", "an@other.org", "--to", "bob@example.gov.vn",
                "--data", str(message_file),
            ],
            capture_output=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout.decode(errors="replace")[-2000:]
        try:
            [received] = sink.wait_messages(1, timeout=12)
        except TimeoutError:
            pytest.fail(f"nothing relayed; Postfix log:\n{postfix.log()[-3000:]}")
    finally:
        postfix.stop()
    assert received.sender == "an@other.org"
    assert received.recipients == ["bob@example.gov.vn"]
    headers, _, body = received.data.partition(b"\r\n\r\n")
    assert body == BODY, "the 8-bit body passed Postfix and the gateway unchanged"
    assert SUBJECT in headers.split(b"\r\n"), "the raw UTF-8 subject is intact"
    assert b"by relay.test (Postfix)" in headers, "it came through Postfix"
    assert b"by mx.example.gov.vn (mailgate)" in headers
    event = gateway.wait_event("message_accepted")
    assert event["listener"] == "inbound"
    assert event["recipients"] == ["bob@example.gov.vn"] and event["sender"] == "an@other.org"
    assert "Traceback" not in gateway.serve_log()
