"""The inbound listener, driven over real sockets: extensions, relay rules, hygiene, smuggling."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import threading
import time

import pytest

from gateway.smtp import replies
from tests.integration.harness import Gateway, RawClient, Sink

MESSAGE = (
    b"From: a@other.org\r\nTo: bob@example.gov.vn\r\nSubject: test\r\n"
    b"Message-ID: <m1@other.org>\r\n\r\nHello\r\n"
)


def test_ehlo_advertises_the_extensions(gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.ehlo("client.test")
        for extension in ("pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes", "size"):
            assert client.has_extn(extension), extension
        assert int(client.esmtp_features["size"]) == 31_457_280
        assert not client.has_extn("auth"), "inbound must not offer AUTH"


def test_local_recipient_is_relayed_with_received_header_and_queue_id(
    gateway: Gateway, sink: Sink
) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.ehlo("client.test")
        code, text = client.mail("a@other.org")
        assert code == 250
        client.rcpt("bob@example.gov.vn")
        code, text = client.data(MESSAGE)
    assert code == 250 and text.startswith(b"2.0.0 OK queued as ")
    queue_id = text.decode().rsplit(" ", 1)[1]
    received = sink.wait_messages(1)[0]
    assert received.recipients == ["bob@example.gov.vn"]
    # Inbound: our verification results on top (RFC 8601 5), then our Received.
    stamp = b"Authentication-Results: mx.example.gov.vn;\r\n\tdkim=none\r\n"
    assert received.data.startswith(stamp + b"Received: from ")
    assert f"id {queue_id}".encode() in received.data.split(b"\r\n\r\n")[0]
    assert received.data.endswith(MESSAGE)
    accepted = gateway.wait_event("message_accepted")
    assert accepted["queue_id"] == queue_id
    assert accepted["message_id"] == "<m1@other.org>"
    assert accepted["recipients"] == ["bob@example.gov.vn"]
    assert accepted["code"] == 250 and accepted["size"] > len(MESSAGE)


def test_foreign_recipient_is_relaying_denied(gateway: Gateway, sink: Sink) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.ehlo("client.test")
        client.mail("a@other.org")
        code, text = client.rcpt("someone@gmail.com")
        assert code == replies.RELAY_DENIED.code
        assert text.decode().startswith(replies.RELAY_DENIED.status)
        assert b"[relay]" in text
        code, _ = client.rcpt("BOB@Example.GOV.VN")
        assert code == 250, "local domains match case-insensitively"
    event = gateway.wait_event("rcpt_rejected")
    assert event["recipients"] == ["someone@gmail.com"] and "relay" in event["reason"]


@pytest.mark.parametrize(
    "smuggled",
    [
        b"\n.\r\n",  # <LF>.<CR><LF> (CVE-2023-51764, Postfix)
        b"\r\n.\n",  # <CR><LF>.<LF>
        b"\n.\n",  # <LF>.<LF>
        b"\r.\r\n",  # <CR>.<CR><LF> (Sendmail, CVE-2023-51765)
        b"\r\n.\r",  # <CR><LF>.<CR>
        b"\r.\r",
    ],
)
def test_smuggling_sequences_are_refused(gateway: Gateway, sink: Sink, smuggled: bytes) -> None:
    client = RawClient(gateway.inbound_port)
    client.envelope()
    injected = (
        b"MAIL FROM:<admin@example.gov.vn>\r\nRCPT TO:<victim@example.gov.vn>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nevil\r\n"
    )
    client.send(b"Subject: one\r\n\r\nfirst" + smuggled + injected + b".\r\n")
    reply = client.reply()
    assert reply.startswith(f"{replies.BARE_LINE_ENDING.code} {replies.BARE_LINE_ENDING.status}")
    assert "[smtp.bare_line_ending]" in reply
    assert client.command("NOOP").startswith("250"), "session stays in step after the refusal"
    client.close()
    time.sleep(0.3)
    assert sink.messages == [], "nothing of a smuggling attempt is delivered"
    event = gateway.wait_event("message_rejected")
    assert event["code"] == replies.BARE_LINE_ENDING.code
    assert "[smtp.bare_line_ending]" in event["reason"]


def test_line_and_header_limits(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(
        sink.url, sink.url, smtp_extra={"max_header_lines": 5, "max_message_size": 20_000}
    ).start()
    client = RawClient(gateway.inbound_port)
    client.envelope()
    client.send(b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n.\r\n")
    assert client.reply().startswith(f"500 {replies.LINE_TOO_LONG.status} Line too long [smtp.max")
    client.command("RSET")
    client.command("MAIL FROM:<a@other.org>")
    client.command("RCPT TO:<bob@example.gov.vn>")
    client.command("DATA")
    client.send(b"Subject: very long\r\n\r\n" + b"x" * 200_000 + b"\r\n.\r\n")
    assert client.reply().startswith("500 5.5.2"), "beyond the 64 KiB read buffer too"
    assert client.command("MAIL FROM:<a@other.org>").startswith("250")
    assert client.command("RCPT TO:<bob@example.gov.vn>").startswith("250")
    assert client.command("DATA").startswith("354")
    client.send(b"".join(b"X-H%d: v\r\n" % i for i in range(10)) + b"\r\nbody\r\n.\r\n")
    assert client.reply().startswith(f"552 {replies.TOO_MANY_HEADERS.status}")
    assert client.command("MAIL FROM:<a@other.org>").startswith("250")
    assert client.command("RCPT TO:<bob@example.gov.vn>").startswith("250")
    assert client.command("DATA").startswith("354")
    client.send(b"Subject: big\r\n\r\n" + b"y" * 900 + b"\r\n" * 30 + (b"z" * 900 + b"\r\n") * 30)
    client.send(b".\r\n")
    assert client.reply().startswith(f"552 {replies.MESSAGE_TOO_BIG.status}")
    client.close()
    time.sleep(0.3)
    assert sink.messages == []


def test_size_parameter_over_limit_is_refused_at_mail(gateway: Gateway) -> None:
    client = RawClient(gateway.inbound_port)
    client.command("EHLO client.test")
    assert client.command("MAIL FROM:<a@other.org> SIZE=99999999999").startswith("552")
    client.close()


def test_garbage_commands_get_errors_then_the_door(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"max_errors": 5}).start()
    client = RawClient(gateway.inbound_port)
    assert client.command("\x01\x02GARBAGE").startswith("500 5.5.2")
    assert client.command("MAIL FROM:<a@other.org>").startswith("503 5.5.1"), "HELO first"
    client.command("EHLO client.test")
    for _ in range(2):
        assert client.command("RCPT TO:<bob@example.gov.vn>").startswith("503 5.5.1")
    assert client.command("DATA").startswith("503 5.5.1")
    assert client.reply() == str(replies.TOO_MANY_ERRORS.with_rule("smtp.max_errors"))
    with pytest.raises(ConnectionError):
        client.command("NOOP")
    # Everyone else is still served.
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as other:
        assert other.noop()[0] == 250
    assert gateway.wait_event("protocol_error")["reason"] == "too many errors [smtp.max_errors]"


def test_dropped_connection_mid_data_delivers_nothing(gateway: Gateway, sink: Sink) -> None:
    client = RawClient(gateway.inbound_port)
    client.envelope()
    client.send(b"Subject: half\r\n\r\n" + b"partial line\r\n" * 1000)
    client.close()
    event = gateway.wait_event("protocol_error")
    assert event["reason"] == "connection lost during DATA"
    assert event["recipients"] == ["bob@example.gov.vn"]
    time.sleep(0.3)
    assert sink.messages == []
    assert list((gateway.workdir / "var" / "spool" / "incoming").iterdir()) == []
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as other:
        other.sendmail("a@other.org", ["bob@example.gov.vn"], MESSAGE)
    assert len(sink.wait_messages(1)) == 1


def test_large_message_spills_to_disk_and_arrives_intact(gateway: Gateway, sink: Sink) -> None:
    line = b"0123456789" * 7 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + b".dot-leading line\r\n" + line * 40000  # ~2.9 MB
    sink.handler.data_delay = 1.0  # time to look at the spool while the relay runs
    incoming = gateway.workdir / "var" / "spool" / "incoming"
    spilled: list[int] = []

    def watch() -> None:
        assert sink.handler.data_started.wait(30)
        spilled.extend(p.stat().st_size for p in incoming.glob("*.tmp"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.sendmail("a@other.org", ["bob@example.gov.vn"], body)
    watcher.join(30)
    # The body sat on disk, not in memory, while it was relayed (past spill_threshold).
    assert len(spilled) == 1 and spilled[0] >= len(body) - 1
    (received,) = sink.wait_messages(1)
    # Byte-exact after our Authentication-Results and Received fields (dot-stuffing
    # undone, nothing else added).
    assert received.data.startswith(b"Authentication-Results: mx.example.gov.vn;")
    assert received.data.endswith(body)
    head = received.data[: -len(body)]
    assert head.count(b"\r\nReceived: ") == 1 and b"\r\n\r\n" not in head
    assert list(incoming.iterdir()) == []  # and dropped once relayed


def test_pipelined_transactions_on_one_connection(gateway: Gateway, sink: Sink) -> None:
    client = RawClient(gateway.inbound_port)
    client.command("EHLO client.test")
    batch = b""
    for n in range(3):
        batch += b"MAIL FROM:<a@other.org>\r\nRCPT TO:<bob@example.gov.vn>\r\nDATA\r\n"
        client.send(batch)
        batch = b""
        assert client.reply().startswith("250 2.1.0")
        assert client.reply().startswith("250 2.1.5")
        assert client.reply().startswith("354")
        client.send(b"Subject: %d\r\n\r\nbody\r\n.\r\n" % n)
        assert client.reply().startswith("250 2.0.0")
    client.close()
    assert len(sink.wait_messages(3)) == 3


def test_per_client_connection_limit(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"max_connections_per_client": 2}).start()
    first, second = RawClient(gateway.inbound_port), RawClient(gateway.inbound_port)
    third = socket.create_connection(("127.0.0.1", gateway.inbound_port), timeout=5)
    assert third.recv(1024).startswith(b"421 4.7.0")
    third.close()
    refused = gateway.wait_event("connection_refused")
    assert refused["code"] == 421 and refused["reason"] == "[smtp.max_connections_per_client]"
    first.close()
    gateway.wait_event("session_end")  # the gateway has let go of the first slot
    fourth = RawClient(gateway.inbound_port)
    assert fourth.greeting.startswith("220")
    second.close()
    fourth.close()


def test_idle_timeout_closes_the_session(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"idle_timeout": 1}).start()
    client = RawClient(gateway.inbound_port)
    time.sleep(2)
    with pytest.raises((ConnectionError, OSError)):
        client.command("NOOP")


def test_swaks_delivers_utf8_mail(gateway: Gateway, sink: Sink) -> None:
    result = subprocess.run(
        [
            "swaks", "--server", f"127.0.0.1:{gateway.inbound_port}",
            "--from", "a@other.org", "--to", "bob@example.gov.vn",
            "--header", "Subject: Công văn số 12", "--body", "Kính gửi: Đỗ Văn Bê",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    received = sink.wait_messages(1)[0]
    assert "Kính gửi: Đỗ Văn Bê".encode() in received.data


def test_transaction_timeout_cuts_a_dribbling_sender(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url, smtp_extra={"transaction_timeout": 1.5}).start()
    client = RawClient(gateway.inbound_port)
    client.envelope()
    with pytest.raises((ConnectionError, OSError)):
        for _ in range(40):  # each line well within the idle timeout, the whole too slow
            client.send(b"X-Slow: line\r\n")
            time.sleep(0.1)
        client.send(b"\r\nbody\r\n.\r\n")
        client.reply()
        client.command("NOOP")
    client.close()
    event = gateway.wait_event("protocol_error")
    assert event["reason"] == "transaction timeout during DATA [smtp.transaction_timeout]"
    assert sink.messages == []
