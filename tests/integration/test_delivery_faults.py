"""Before-queue guarantees under failure: next hop down, mixed results, spool, restart, DSN."""

from __future__ import annotations

import email
import email.policy
import signal
import smtplib
import time

import pytest

from gateway.smtp import replies
from tests.integration.harness import Gateway, Sink, free_port

MESSAGE = b"From: a@example.gov.vn\r\nSubject: faults\r\nMessage-ID: <f1@x>\r\n\r\nbody\r\n"


USER, PASSWORD = "a@example.gov.vn", "Gi4y-ph3p!"


def add_user(gateway: Gateway) -> None:
    gateway.cli("mailbox", "add", USER, "--name", "Nguyễn Văn A", "--password", PASSWORD)


def delivered_to(gateway: Gateway, recipient: str) -> int:
    """How many deliveries the event log records for ``recipient`` (a duplicate shows here)."""
    return sum(recipient in e["recipients"] for e in gateway.events("delivered"))


def submit(gateway: Gateway, recipients: list[str], sender: str | None = None) -> tuple:
    """Send and return (code, text) of the final reply instead of raising. Mail with a
    foreign recipient goes through submission (AUTH, as USER), the rest through inbound."""
    outbound = any(not r.endswith("@example.gov.vn") for r in recipients)
    if sender is None:
        sender = USER if outbound else "a@other.org"
    port = gateway.submission_port if outbound else gateway.inbound_port
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        if outbound:
            add_user(gateway)
            client.login(USER, PASSWORD)
        client.docmd(f"MAIL FROM:<{sender}>")
        for recipient in recipients:
            client.rcpt(recipient)
        return client.data(MESSAGE)


def test_next_hop_down_answers_4xx_and_keeps_nothing(make_gateway) -> None:
    dead = f"smtp://127.0.0.1:{free_port()}"
    gateway = make_gateway(dead, dead).start()
    code, text = submit(gateway, ["bob@example.gov.vn", "carol@example.gov.vn"])
    assert code == replies.NEXT_HOP_UNAVAILABLE.code
    assert text.decode().startswith(replies.NEXT_HOP_UNAVAILABLE.status)
    assert gateway.queued_entries() == [], "a 4xx must leave no copy behind (no duplicate later)"
    event = gateway.wait_event("message_tempfailed")
    assert event["code"] == 451 and "[delivery]" in event["reason"]
    assert "127.0.0.1" not in text.decode(), "the next hop's address is not the sender's business"


def test_mixed_results_spool_the_deferred_and_retry_exactly_once(make_gateway, sink: Sink) -> None:
    outbound = Sink()  # down for now: created, not started
    gateway = make_gateway(sink.url, outbound.url).start()
    code, text = submit(gateway, ["bob@example.gov.vn", "partner@other.org"])
    assert code == 250, text
    assert [m.recipients for m in sink.wait_messages(1)] == [["bob@example.gov.vn"]]
    [entry] = gateway.queued_entries()
    assert entry["pending"] == ["partner@other.org"]
    outbound.start()
    try:
        [relayed] = outbound.wait_messages(1, timeout=20)
        assert relayed.recipients == ["partner@other.org"]
        # Once dequeued, nothing is left to deliver: the counts are final, no waiting needed.
        gateway.wait_event("dequeued", lambda e: e["queue_id"] == entry["queue_id"])
        assert gateway.queued_entries() == []
        assert len(outbound.messages) == 1 and len(sink.messages) == 1, "no duplicates"
        assert delivered_to(gateway, "partner@other.org") == 1
        assert delivered_to(gateway, "bob@example.gov.vn") == 1
    finally:
        outbound.stop()


def test_permanent_failure_after_acceptance_is_bounced_with_a_dsn(make_gateway, sink: Sink) -> None:
    sink.handler.rcpt_replies["nobody@example.gov.vn"] = "550 5.1.1 <nobody>: user unknown"
    gateway = make_gateway(sink.url, sink.url).start()
    code, _ = submit(gateway, ["bob@example.gov.vn", "nobody@example.gov.vn"], "a@other.org")
    assert code == 250
    messages = sink.wait_messages(2)
    delivered, dsn = messages[0], messages[1]
    assert delivered.recipients == ["bob@example.gov.vn"]
    assert dsn.sender == "<>" and dsn.recipients == ["a@other.org"]
    report = email.message_from_bytes(dsn.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = report.get_payload()[1].as_string()
    assert "Final-Recipient: rfc822; nobody@example.gov.vn" in status
    assert "Status: 5.1.1" in status
    bounced = gateway.wait_event("bounced")
    assert bounced["recipients"] == ["nobody@example.gov.vn"]


def test_every_recipient_refused_is_a_5xx_not_a_bounce(make_gateway, sink: Sink) -> None:
    sink.handler.rcpt_replies["nobody@example.gov.vn"] = "550 5.1.1 <nobody>: user unknown"
    gateway = make_gateway(sink.url, sink.url).start()
    code, text = submit(gateway, ["nobody@example.gov.vn"])
    assert code == 550 and text.startswith(b"5.1.1")
    # Bounce and spool happen before the reply; the event says the reply was given.
    gateway.wait_event("message_rejected")
    assert sink.messages == [] and gateway.queued_entries() == []
    assert gateway.events("bounced") == [] and gateway.events("delivered") == []


def test_next_hop_killed_mid_transaction_gives_4xx_then_one_copy(make_gateway, sink: Sink) -> None:
    gateway = make_gateway(sink.url, sink.url).start()
    sink.handler.drop_after_data = True
    code, _ = submit(gateway, ["bob@example.gov.vn"])
    assert code == 451
    assert gateway.queued_entries() == []
    sink.handler.drop_after_data = False
    code, _ = submit(gateway, ["bob@example.gov.vn"])  # the sender's retry
    assert code == 250
    gateway.wait_event("message_accepted")
    assert gateway.queued_entries() == [], "the 4xx left nothing behind to deliver again"
    assert len(sink.messages) == 1
    assert delivered_to(gateway, "bob@example.gov.vn") == 1


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])
def test_restart_resumes_a_non_empty_spool(make_gateway, sink: Sink, stop_signal: int) -> None:
    """What got a 250 survives a stop, even kill -9 right after the reply."""
    outbound = Sink()
    gateway = make_gateway(sink.url, outbound.url, queue={"retry_max_seconds": 2}).start()
    code, _ = submit(gateway, ["bob@example.gov.vn", "partner@other.org"])
    assert code == 250
    assert [e["pending"] for e in gateway.queued_entries()] == [["partner@other.org"]]
    gateway.stop(stop_signal)
    outbound.start()
    try:
        gateway.start()
        [relayed] = outbound.wait_messages(1, timeout=20)
        assert relayed.recipients == ["partner@other.org"]
        assert relayed.data.endswith(MESSAGE)
        gateway.wait_event("dequeued")
        assert gateway.queued_entries() == []
        assert len(sink.messages) == 1 and len(outbound.messages) == 1, "no duplicates"
        assert delivered_to(gateway, "partner@other.org") == 1
    finally:
        outbound.stop()


def test_lifetime_expiry_bounces_with_4_4_7(make_gateway, sink: Sink) -> None:
    dead = f"smtp://127.0.0.1:{free_port()}"
    gateway = make_gateway(
        sink.url, dead, queue={"lifetime_hours": 0.0005, "retry_min_seconds": 1}
    ).start()
    code, _ = submit(gateway, ["bob@example.gov.vn", "partner@other.org"], "a@example.gov.vn")
    assert code == 250
    messages = sink.wait_messages(2, timeout=30)
    dsn = messages[1]
    assert dsn.sender == "<>" and dsn.recipients == ["a@example.gov.vn"]
    assert b"Status: 4.4.7" in dsn.data
    assert b"partner@other.org" in dsn.data
    gateway.wait_event("dequeued", lambda e: True)
    deadline = time.time() + 10
    while gateway.queued_entries() and time.time() < deadline:
        time.sleep(0.2)
    assert gateway.queued_entries() == []


@pytest.mark.parametrize("sender", ["", "MAILER-DAEMON@other.org"])
def test_bounces_are_never_bounced(make_gateway, sink: Sink, sender: str) -> None:
    sink.handler.rcpt_replies["nobody@example.gov.vn"] = "550 5.1.1 user unknown"
    gateway = make_gateway(sink.url, sink.url).start()
    code, _ = submit(gateway, ["bob@example.gov.vn", "nobody@example.gov.vn"], sender)
    assert code == 250
    gateway.wait_event("bounce_suppressed")
    gateway.wait_event("message_accepted")
    assert gateway.queued_entries() == [], "no DSN spooled for a bounce"
    assert len(sink.messages) == 1 and gateway.events("bounced") == []
