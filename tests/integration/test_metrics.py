"""``[metrics] listen``: a real ``mailgate serve`` exposes Prometheus text at /metrics whose
counters move with the mail, plus the last finished day's final chain hash; with
``log.syslog_events`` every event also reaches syslog."""

from __future__ import annotations

import contextlib
import json
import smtplib
import socket
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from gateway.events.writer import EventLog
from tests.integration.harness import Gateway, Sink, free_port, render_toml, wait_for_port

MESSAGE = b"From: a@other.org\r\nTo: bob@example.gov.vn\r\nSubject: m\r\n\r\nhello\r\n"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_metrics_move_with_the_mail_and_carry_the_days_final_hash(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    gateway = make_gateway(sink.url, sink.url)
    port = free_port()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    sections = gateway.sections()
    sections["log"].update(syslog=f"udp:127.0.0.1:{receiver.getsockname()[1]}", syslog_events=True)
    sections["metrics"] = {"listen": f"127.0.0.1:{port}"}
    gateway.write_config(render_toml(sections))
    yesterday = datetime.now(UTC) - timedelta(days=1)
    earlier = EventLog(gateway.log_dir, clock=lambda: yesterday, sync_interval=3600)
    earlier.emit("gateway_stop")
    earlier.close()
    final = json.loads(next(gateway.log_dir.glob("events-*.jsonl")).read_text())["chain"]

    gateway.start()
    wait_for_port(port, process=gateway.process)
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.sendmail("a@other.org", ["bob@example.gov.vn"], MESSAGE)
        with contextlib.suppress(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@other.org", ["someone@elsewhere.org"], MESSAGE)
    gateway.wait_event("delivered")
    gateway.wait_event("session_end")
    checks = gateway.wait_event("message_accepted")["checks"]  # the rules that looked at it
    assert {"attachment_cap", "classification", "attachment_type"} <= set(checks), checks
    metrics = scrape(port)
    accepted = ("mailgate_messages_total", (("listener", "inbound"), ("outcome", "accepted")))
    assert metrics[accepted] == 1
    assert metrics[("mailgate_refusals_total", (("rule", "relay"),))] == 1
    assert metrics[("mailgate_delivery_seconds_count", (("result", "delivered"),))] == 1
    assert metrics[("mailgate_sessions_open", (("listener", "inbound"),))] == 0
    assert metrics[("mailgate_spool_depth", ())] == 0
    assert metrics[("mailgate_spool_oldest_seconds", ())] == 0
    info = [labels for (name, labels) in metrics if name == "mailgate_log_day_final_hash_info"]
    assert dict(info[0])["sha256"] == final
    assert dict(info[0])["day"] == yesterday.date().isoformat()

    # While a session is open, the gauge says so.
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.ehlo()
        wait_until(
            lambda: scrape(port)[("mailgate_sessions_open", (("listener", "inbound"),))] == 1
        )

    seen: list[str] = []
    while not any('"event":"message_accepted"' in line for line in seen):
        seen.append(receiver.recv(65536).decode())
    receiver.close()


def test_auth_failures_and_spool_depth_are_counted(
    make_gateway: Callable[..., Gateway], sink: Sink
) -> None:
    sink.handler.rcpt_replies["carol@example.gov.vn"] = "451 4.3.0 try later"  # spooled
    gateway = make_gateway(sink.url, sink.url, queue={"retry_min_seconds": 3600})
    port = free_port()
    gateway.add_sections({"metrics": {"listen": f"127.0.0.1:{port}"}})
    gateway.start()
    wait_for_port(port, process=gateway.process)
    with smtplib.SMTP("127.0.0.1", gateway.submission_port) as client:
        client.ehlo()
        with contextlib.suppress(smtplib.SMTPAuthenticationError):
            client.login("nobody@example.gov.vn", "not-the-password")
    with smtplib.SMTP("127.0.0.1", gateway.inbound_port) as client:
        client.sendmail("a@other.org", ["bob@example.gov.vn", "carol@example.gov.vn"], MESSAGE)
    gateway.wait_events("auth_failure", 2)  # smtplib tries PLAIN, then LOGIN
    gateway.wait_event("deferred")
    metrics = scrape(port)
    assert metrics[("mailgate_auth_failures_total", (("listener", "submission"),))] == 2
    assert metrics[("mailgate_spool_depth", ())] == 1
    assert 0 <= metrics[("mailgate_spool_oldest_seconds", ())] < 60
    assert metrics[("mailgate_delivery_seconds_count", (("result", "deferred"),))] == 1
