"""Bounces must parse back as RFC 3464 reports and keep Vietnamese text intact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser

import pytest

from gateway.dsn import FailedRecipient, build_dsn, is_bounce_worthy

ARRIVAL = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
ORIGINAL_HEADERS = (
    "Received: from client.example.gov.vn\r\n"
    "From: Nguyễn Văn An <an@example.gov.vn>\r\n"
    "To: Trần Thị Bình <binh@other.gov.vn>\r\n"
    "Subject: Báo cáo tình hình tháng 11\r\n"
    "Message-ID: <abc@example.gov.vn>\r\n"
    "\r\n"
).encode()
VIETNAMESE_DIAGNOSTIC = "550 5.1.1 <binh@other.gov.vn>: hộp thư không tồn tại"
FAILURES = [
    FailedRecipient(
        recipient="binh@other.gov.vn",
        status="5.1.1",
        diagnostic=VIETNAMESE_DIAGNOSTIC,
        remote_mta="127.0.0.1:24",
    ),
    FailedRecipient(
        recipient="slow@far.example",
        status="4.4.7",
        diagnostic="451 4.3.0 try again later",
        remote_mta="mx.far.example",
    ),
    FailedRecipient(recipient="nobody@x.example", status="5.4.4", diagnostic="", remote_mta=None),
]


def build(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "reporting_mta": "mail.example.gov.vn",
        "original_sender": "an@example.gov.vn",
        "queue_id": "Q1A2B3",
        "arrival": ARRIVAL,
        "failures": FAILURES,
        "original_headers": ORIGINAL_HEADERS,
        "now": NOW,
    }
    args.update(overrides)
    return build_dsn(**args)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> list[Message]:
    return list(message.iter_parts())


def status_blocks(message: EmailMessage) -> list[Message]:
    report = parts(message)[1]
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    return blocks


def unescape_unitext(text: str) -> str:
    """Undo RFC 6533 ``\\x{HHHH}`` escapes, as a DSN reader would."""
    out, rest = [], text
    while (start := rest.find("\\x{")) != -1:
        end = rest.index("}", start)
        out += [rest[:start], chr(int(rest[start + 3 : end], 16))]
        rest = rest[end + 1 :]
    return "".join([*out, rest])


def test_top_level_headers() -> None:
    message = parse(build())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mail.example.gov.vn"
    assert message["From"].addresses[0].display_name == "Mail Delivery System"
    assert message["To"].addresses[0].addr_spec == "an@example.gov.vn"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime == NOW
    assert message["Message-ID"].endswith("@mail.example.gov.vn>")
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]


def test_message_ids_are_fresh() -> None:
    assert parse(build())["Message-ID"] != parse(build())["Message-ID"]


def test_per_message_fields() -> None:
    per_message = status_blocks(parse(build()))[0]
    assert per_message["Reporting-MTA"] == "dns; mail.example.gov.vn"
    assert per_message["Arrival-Date"] == "Wed, 25 Nov 2026 10:00:00 +0000"
    assert per_message["X-Mailgate-Queue-ID"] == "Q1A2B3"


def test_one_block_per_recipient_all_failed() -> None:
    blocks = status_blocks(parse(build()))[1:]
    assert len(blocks) == 3
    assert [b["Final-Recipient"] for b in blocks] == [
        "rfc822; binh@other.gov.vn",
        "rfc822; slow@far.example",
        "rfc822; nobody@x.example",
    ]
    # A 4.x.x status here means the spool lifetime ran out: still a final failure.
    assert [b["Action"] for b in blocks] == ["failed"] * 3
    assert [b["Status"] for b in blocks] == ["5.1.1", "4.4.7", "5.4.4"]
    assert [b["Remote-MTA"] for b in blocks] == ["dns; 127.0.0.1:24", "dns; mx.far.example", None]
    assert blocks[1]["Diagnostic-Code"] == "smtp; 451 4.3.0 try again later"
    assert blocks[2]["Diagnostic-Code"] is None
    assert [b["Last-Attempt-Date"] for b in blocks] == ["Mon, 30 Nov 2026 10:00:00 +0000"] * 3


def test_vietnamese_diagnostic_survives() -> None:
    message = parse(build())
    text = parts(message)[0]
    assert text.get_content_charset() == "utf-8"
    body = text.get_content()
    assert VIETNAMESE_DIAGNOSTIC in body
    assert "Q1A2B3" in body
    for failure in FAILURES:
        assert f"<{failure.recipient}>" in body
    diagnostic = status_blocks(message)[1]["Diagnostic-Code"]
    assert diagnostic.isascii()
    assert unescape_unitext(diagnostic) == f"smtp; {VIETNAMESE_DIAGNOSTIC}"


def test_original_utf8_headers_survive_byte_for_byte() -> None:
    headers = parts(parse(build()))[2]
    assert headers.get_content_type() == "text/rfc822-headers"
    decoded = headers.get_payload(decode=True)
    assert decoded.splitlines() == ORIGINAL_HEADERS.splitlines()[:-1]
    assert "Subject: Báo cáo tình hình tháng 11" in decoded.decode("utf-8")


def test_invalid_utf8_in_original_headers_is_kept() -> None:
    raw_headers = b"Subject: caf\xe9 latin-1\nX-Odd: \xff\xfe\n"
    headers = parts(parse(build(original_headers=raw_headers)))[2]
    assert headers.get_payload(decode=True).splitlines() == raw_headers.splitlines()
    assert headers.get_param("charset") is None


def test_ascii_headers_stay_plain() -> None:
    raw_headers = b"From: a@example.gov.vn\nSubject: hello\n\n"
    headers = parts(parse(build(original_headers=raw_headers)))[2]
    assert headers["Content-Transfer-Encoding"] == "7bit"
    assert headers.get_payload(decode=True).splitlines() == [
        b"From: a@example.gov.vn",
        b"Subject: hello",
    ]


def test_crlf_only_and_seven_bit() -> None:
    raw = build()
    assert raw.count(b"\n") == raw.count(b"\r\n")
    assert raw.count(b"\r") == raw.count(b"\r\n")
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_long_diagnostic_is_not_encoded_or_folded_badly() -> None:
    long_reply = "550 5.7.1 " + "x" * 200 + " rejected by policy " + "ố" * 300
    failure = FailedRecipient("a@b.example", "5.7.1", long_reply, None)
    raw = build(failures=[failure])
    block = status_blocks(parse(raw))[1]
    diagnostic = block["Diagnostic-Code"]
    assert "=?" not in diagnostic
    assert diagnostic.startswith("smtp; 550 5.7.1 " + "x" * 200)
    assert diagnostic.endswith("...")
    assert long_reply in parts(parse(raw))[0].get_content()


def test_diagnostic_line_breaks_do_not_break_fields() -> None:
    failure = FailedRecipient("a@b.example", "5.1.1", "550-first line\r\n550 second line", None)
    block = status_blocks(parse(build(failures=[failure])))[1]
    assert block["Diagnostic-Code"] == "smtp; 550-first line 550 second line"
    assert block["Last-Attempt-Date"] is not None


def test_utf8_recipient_uses_utf8_address_type() -> None:
    failure = FailedRecipient("bình@ví-dụ.vn", "5.1.1", "", None)
    block = status_blocks(parse(build(failures=[failure])))[1]
    kind, _, address = block["Final-Recipient"].partition("; ")
    assert kind == "utf-8"
    assert unescape_unitext(address) == "bình@ví-dụ.vn"


def test_utf8_sender_gets_raw_utf8_to() -> None:
    raw = build(original_sender="an@ví-dụ.vn")
    assert "To: an@ví-dụ.vn\r\n".encode() in raw
    assert status_blocks(parse(raw))[0]["Reporting-MTA"] == "dns; mail.example.gov.vn"


def test_naive_and_offset_datetimes_are_reported_in_utc() -> None:
    hanoi = timezone(timedelta(hours=7))
    message = parse(build(arrival=datetime(2026, 11, 25, 17, 0, tzinfo=hanoi), now=NOW))
    assert status_blocks(message)[0]["Arrival-Date"] == "Wed, 25 Nov 2026 10:00:00 +0000"
    message = parse(build(arrival=datetime(2026, 11, 25, 10, 0)))
    assert status_blocks(message)[0]["Arrival-Date"] == "Wed, 25 Nov 2026 10:00:00 +0000"


@pytest.mark.parametrize("status", ["550", "2.0.0", "5.1", "5.1.1.1", "x.1.1", "5.1000.1", ""])
def test_bad_status_is_refused(status: str) -> None:
    with pytest.raises(ValueError, match="enhanced status"):
        build(failures=[FailedRecipient("a@b.example", status, "", None)])


def test_no_failures_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build(failures=[])


@pytest.mark.parametrize("sender", ["", "<>", "MAILER-DAEMON@mail.example.gov.vn"])
def test_never_builds_a_bounce_of_a_bounce(sender: str) -> None:
    with pytest.raises(ValueError, match="never bounce"):
        build(original_sender=sender)


@pytest.mark.parametrize(
    ("sender", "worthy"),
    [
        ("", False),
        ("<>", False),
        ("  ", False),
        ("MAILER-DAEMON@example.gov.vn", False),
        ("mailer-daemon@other.example", False),
        ("<Mailer-Daemon@other.example>", False),
        ("MAILER-DAEMON", False),
        ("an@example.gov.vn", True),
        ("<an@example.gov.vn>", True),
        ("postmaster@example.gov.vn", True),
        ("mailer-daemon-fan@example.gov.vn", True),
        ("bình@ví-dụ.vn", True),
    ],
)
def test_is_bounce_worthy(sender: str, worthy: bool) -> None:
    assert is_bounce_worthy(sender) is worthy
