"""Observers of the event log (metrics, the syslog copy) never cost the record, and the
syslog copy never blocks emit; internal errors are described without their message."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from gateway.config import SyslogTarget
from gateway.events import forward
from gateway.events.errors import describe
from gateway.events.forward import SyslogForwarder
from gateway.events.writer import EventLog


def test_a_failing_observer_does_not_cost_the_record(tmp_path: Path) -> None:
    log = EventLog(tmp_path, sync_interval=3600)
    seen: list[str] = []

    def broken(record: dict) -> None:
        raise RuntimeError("observer bug")

    log.observers += [broken, lambda record: seen.append(record["event"])]
    log.emit("delivered")
    log.close()
    assert seen == ["delivered"]
    lines = next(tmp_path.glob("events-*.jsonl")).read_text().splitlines()
    assert json.loads(lines[0])["event"] == "delivered"


def test_the_syslog_copy_sends_each_event_and_drops_when_its_queue_is_full() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    target = SyslogTarget("udp", "127.0.0.1", receiver.getsockname()[1])
    forwarder = SyslogForwarder(target)
    forwarder({"ts": "t", "event": "auth_failure", "user": "a@b"})
    assert b'mailgate: {"ts":"t","event":"auth_failure","user":"a@b"}' in receiver.recv(4096)
    forwarder.close()
    stalled = SyslogForwarder.__new__(SyslogForwarder)  # a collector that never drains
    stalled.dropped = 0
    stalled._queue = forward.queue.Queue(2)
    for number in range(5):
        stalled({"event": "delivered", "n": number})
    assert stalled.dropped == 3
    receiver.close()


def test_describe_names_type_and_place_never_the_message() -> None:
    def decode(token: str) -> None:
        raise ValueError(f"cannot decode {token}")

    try:
        decode("AG5hbWUAU2VjcmV0")
    except ValueError as exc:
        text = describe(exc)
    assert text.startswith("ValueError at ") and "(decode)" in text
    assert "AG5hbWUAU2VjcmV0" not in text
