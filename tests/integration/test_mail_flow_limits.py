"""Mail-flow policies on a running gateway: the outbound rate limit (MIC 7.2.c) and free
webmail (MOST 16.1), as a mail client and an operator meet them."""

from __future__ import annotations

import json
import signal
import smtplib
from collections.abc import Callable
from typing import Any

import pytest

from gateway.smtp import replies
from tests.integration.harness import Gateway, Sink

AN, AN_PW = "nvan@example.gov.vn", "An-Matkhau-2026"
SMALL_LIMITS = {
    "max_messages_per_hour": 2,
    "max_recipients_per_hour": 50,
    "lock_messages_per_hour": 4,
    "lock_recipients_per_hour": 100,
}


def start(make_gateway: Callable[..., Gateway], sink: Sink, **filters: dict[str, Any]) -> Gateway:
    gateway = make_gateway(sink.url, sink.url, mailboxes=("bob@example.gov.vn",))
    gateway.add_sections({f"filters.{name}": table for name, table in filters.items()})
    gateway.cli("mailbox", "add", AN, "--name", "Nguyễn Văn An", "--password", AN_PW)
    return gateway.start()


def login(gateway: Gateway) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gateway.submission_port, timeout=30)
    client.ehlo("client.test")
    client.user, client.password = AN, AN_PW
    client.auth("PLAIN", client.auth_plain)
    return client


def message(to: str, extra: str = "") -> bytes:
    return f"From: {AN}\r\nTo: {to}\r\n{extra}Subject: test\r\n\r\nhi\r\n".encode()


def send(client: smtplib.SMTP, to: str = "partner@other.org", extra: str = "") -> tuple[int, str]:
    """One transaction; the reply to MAIL FROM if it refused, else the reply to DATA."""
    code, text = client.mail(AN)
    if code != 250:
        return code, text.decode()
    assert client.rcpt(to)[0] == 250
    code, text = client.data(message(to, extra))
    if code != 250:
        client.rset()
    return code, text.decode()


def state(gateway: Gateway) -> dict[str, Any]:
    return json.loads(gateway.cli("mailbox", "show", AN, "--json").stdout)


def assert_rate_limited(code: int, text: str) -> None:
    assert (code, text.split()[0]) == (replies.RATE_LIMITED.code, replies.RATE_LIMITED.status)
    assert "[rate_limit]" in text


def test_past_the_limit_451_past_the_lock_send_locked_then_550(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    gateway = start(make_gateway, sink, rate_limit=SMALL_LIMITS)
    with login(gateway) as client:
        assert [send(client)[0] for _ in range(2)] == [250, 250]
        for _ in range(2):  # 3rd and 4th: over the limit, under the lock
            assert_rate_limited(*send(client))
        assert state(gateway)["state"] == "active"
        code, text = send(client)  # 5th: past the lock
        assert_rate_limited(code, text)
        assert "suspected compromise" in text
        assert len(sink.wait_messages(2)) == 2
        shown = state(gateway)
        assert (shown["state"], shown["lock_reason"]) == ("send-locked", "suspected compromise")
        event = gateway.wait_event("mailbox_state")
        assert event["user"] == AN and event["actor"] == "rate_limit"
        assert event["state"] == "send-locked" and "5 messages" in event["reason"]
        code, text = send(client)  # the same session, next MAIL FROM
        assert code == replies.SENDING_LOCKED.code and "[send_lock]" in text
    tempfailed = gateway.wait_events("message_tempfailed", 3)
    assert all("[rate_limit]" in e["reason"] and e["user"] == AN for e in tempfailed)
    assert len(sink.messages) == 2


def test_counters_survive_a_reload(make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    gateway = start(make_gateway, sink, rate_limit=SMALL_LIMITS)
    with login(gateway) as client:
        assert [send(client)[0] for _ in range(2)] == [250, 250]
    gateway.signal(signal.SIGHUP)
    gateway.wait_event("config_reloaded")
    with login(gateway) as client:
        assert_rate_limited(*send(client))


def test_recipients_per_hour(make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    limits = {**SMALL_LIMITS, "max_recipients_per_hour": 3, "lock_recipients_per_hour": 9}
    gateway = start(make_gateway, sink, rate_limit=limits)
    with login(gateway) as client:
        client.sendmail(AN, ["a@other.org", "b@other.org"], message("a@other.org"))
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(AN, ["c@other.org", "d@other.org"], message("c@other.org"))
    assert_rate_limited(refused.value.smtp_code, refused.value.smtp_error.decode())
    assert "recipients" in refused.value.smtp_error.decode()


@pytest.mark.parametrize("where", ["recipient", "reply-to"])
def test_freemail_reject(make_gateway: Callable[..., Gateway], sink: Sink, where: str) -> None:
    gateway = start(make_gateway, sink, freemail={"action": "reject"})
    with login(gateway) as client:
        if where == "recipient":
            code, text = send(client, "partner@gmail.com")
        else:
            code, text = send(client, "bob@example.gov.vn", "Reply-To: <an.home@yahoo.com>\r\n")
        assert (code, text.split()[0]) == (550, replies.FREEMAIL_REFUSED.status)
        assert "[freemail]" in text and replies.FREEMAIL_REFUSED.text in text
        assert send(client, "partner@other.org")[0] == 250
    event = gateway.wait_event("message_rejected")
    assert "[freemail]" in event["reason"]
    assert [m.recipients for m in sink.wait_messages(1)] == [["partner@other.org"]]


def test_freemail_tag(make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    gateway = start(make_gateway, sink, freemail={"action": "tag", "header": "X-Free"})
    with login(gateway) as client:
        assert send(client, "partner@gmail.com", "X-Free: forged\r\n")[0] == 250
    (received,) = sink.wait_messages(1)
    assert b"X-Free: to=gmail.com\r\n" in received.data and b"forged" not in received.data
    assert "[freemail]" in gateway.wait_event("message_transformed")["reason"]


def test_freemail_log_is_the_default(make_gateway: Callable[..., Gateway], sink: Sink) -> None:
    gateway = start(make_gateway, sink)
    with login(gateway) as client:
        assert send(client, "partner@gmail.com")[0] == 250
    (received,) = sink.wait_messages(1)
    assert b"X-Mailgate-Freemail" not in received.data
    event = gateway.wait_event("message_transformed")
    assert event["reason"] == "[freemail] free webmail: recipient at gmail.com"
