"""The event log reaches the disk: fsynced within the interval, on day change and on close,
but never once per event (emit runs on the event loop)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.events.writer import EventLog, event_file_name


class FsyncSpy:
    """Replaces ``os.fsync``: records the file each call synced, then really syncs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: int = 0) -> None:
        self.files: list[str] = []
        self.fail = fail
        self.lock = threading.Lock()
        real = os.fsync

        def fsync(fd: int) -> None:
            with self.lock:
                if self.fail:
                    self.fail -= 1
                    raise OSError(5, "Input/output error")
                self.files.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.files)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


DAY_ONE = datetime(2026, 11, 25, 23, 59, tzinfo=UTC)
DAY_TWO = datetime(2026, 11, 26, 0, 1, tzinfo=UTC)


def test_written_events_are_fsynced_within_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = FsyncSpy(monkeypatch)
    log = EventLog(tmp_path, clock=lambda: DAY_ONE, sync_interval=0.05)
    try:
        log.emit("message_accepted", message_id="<a@b>")
        wait_for(lambda: spy.count >= 1)
        assert spy.files[0] == event_file_name("2026-11-25")
    finally:
        log.close()


def test_emit_never_fsyncs_itself_and_close_syncs_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = FsyncSpy(monkeypatch)
    log = EventLog(tmp_path, clock=lambda: DAY_ONE, sync_interval=3600)
    for number in range(200):
        log.emit("delivered", n=number)
    assert spy.count == 0, "an fsync per event would stall the event loop"
    log.close()
    assert spy.files == [event_file_name("2026-11-25")]


def test_a_day_change_fsyncs_the_day_that_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = FsyncSpy(monkeypatch)
    now = [DAY_ONE]
    log = EventLog(tmp_path, clock=lambda: now[0], sync_interval=3600)
    log.emit("session_start")
    now[0] = DAY_TWO
    log.emit("session_end")
    assert spy.files == [event_file_name("2026-11-25")]
    log.close()
    assert spy.files == [event_file_name("2026-11-25"), event_file_name("2026-11-26")]


def test_sync_does_nothing_when_nothing_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = FsyncSpy(monkeypatch)
    log = EventLog(tmp_path, sync_interval=3600)
    assert log.sync() is False
    log.emit("gateway_start")
    assert log.sync() is True
    assert log.sync() is False
    log.close()
    assert spy.count == 1


def test_a_failing_fsync_does_not_stop_the_syncing_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = FsyncSpy(monkeypatch, fail=1)
    log = EventLog(tmp_path, clock=lambda: DAY_ONE, sync_interval=0.05)
    try:
        log.emit("message_accepted")
        wait_for(lambda: spy.fail == 0 and spy.count >= 1)  # failed once, then synced
    finally:
        log.close()


def test_a_failing_write_is_counted_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full log disk must not turn a delivered message into a 451 (the sender would
    send it again) nor stop the gateway's background tasks."""
    events = EventLog(tmp_path)

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gateway.events.writer.os.write", disk_full)
    record = events.emit("message_accepted", queue_id="Q1")
    assert record["queue_id"] == "Q1"
    assert events.write_failures == 1
    monkeypatch.undo()
    events.emit("delivered", queue_id="Q1")
    events.close()
    lines = "".join(p.read_text() for p in tmp_path.glob("events-*.jsonl")).splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["delivered"]


def test_timestamps_are_utc_with_microseconds_and_a_z_whatever_the_clock_zone() -> None:
    from datetime import timedelta, timezone

    from gateway.events.writer import rfc3339

    hanoi = timezone(timedelta(hours=7))
    assert rfc3339(datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)) == (
        "2026-11-25T12:00:00.123456Z"
    )
    assert rfc3339(datetime(2026, 11, 25, 12, 0, tzinfo=UTC)) == "2026-11-25T12:00:00.000000Z"
    assert rfc3339(datetime(2026, 11, 26, 6, 30, 0, 7, tzinfo=hanoi)) == (
        "2026-11-25T23:30:00.000007Z"
    )
