"""The event record (MIC Art. 8.2): one JSON object per line, one file per UTC day.

Only this module writes the log. Each event is a single ``os.write`` on an
``O_APPEND`` descriptor, so lines from the server and the CLI never interleave
and a crash leaves at most one torn last line, which the search skips.

A message that got 250 must not lose its record in a power cut, yet emit runs on the
event loop and an fsync per event would stall every session. So emit only writes; a
daemon thread fsyncs the day file at most ``sync_interval`` seconds after a write
(default 1 s), and a day change or ``close`` fsyncs what is left.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EVENT_FILE_PREFIX = "events-"
EVENT_FILE_SUFFIX = ".jsonl"
SYNC_INTERVAL_SECONDS = 1.0

log = logging.getLogger("gateway.events")


def event_file_name(day: str) -> str:
    """File holding the events of one UTC day (``YYYY-MM-DD``)."""
    return f"{EVENT_FILE_PREFIX}{day}{EVENT_FILE_SUFFIX}"


def rfc3339(moment: datetime) -> str:
    """UTC timestamp as the contract writes it: ``2026-11-25T12:00:00.123456Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventLog:
    """Appends events to ``log_dir``; thread-safe, so CLI and worker threads may emit too."""

    def __init__(
        self,
        log_dir: Path,
        clock: Callable[[], datetime] | None = None,
        sync_interval: float = SYNC_INTERVAL_SECONDS,
    ) -> None:
        self.log_dir = log_dir
        self.sync_interval = sync_interval
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._day = ""
        self._fd: int | None = None
        self._dirty = False  # written since the last fsync
        self.write_failures = 0  # events that could not be written (disk full, I/O error)
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record one event; ``None`` fields are left out. Returns the record written."""
        now = self._clock()
        record: dict[str, Any] = {"ts": rfc3339(now), "event": event}
        record.update((k, v) for k, v in fields.items() if v is not None)
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        data = (line + "\n").encode("utf-8", "surrogateescape")
        with self._lock:
            try:
                os.write(self._descriptor(now.astimezone(UTC).strftime("%Y-%m-%d")), data)
            except OSError as exc:
                # A full or failing log disk must not turn a delivered message into a 451
                # (the sender would send it again) nor stop the gateway: count and say so.
                self.write_failures += 1
                if self.write_failures == 1 or self.write_failures % 1000 == 0:
                    log.error("cannot write the event log (%d events lost): %s",
                              self.write_failures, exc)  # fmt: skip
                return record
            self._dirty = True
            if self._syncer is None and not self._stop.is_set():
                self._syncer = threading.Thread(
                    target=self._sync_loop, name="events-fsync", daemon=True
                )
                self._syncer.start()
        return record

    def sync(self) -> bool:
        """Fsync the day file if anything was written since the last time; True if it did.

        The descriptor is duplicated under the lock and synced outside it, so emitters
        never wait for the disk (and a day change may close the original meanwhile).
        """
        with self._lock:
            if not self._dirty or self._fd is None:
                return False
            fd = os.dup(self._fd)
            self._dirty = False
        try:
            os.fsync(fd)
        except BaseException:
            with self._lock:
                self._dirty = True  # try again next time
            raise
        finally:
            os.close(fd)
        return True

    def _sync_loop(self) -> None:
        """A background task must not die of one bad fsync: log it and keep going."""
        while not self._stop.wait(self.sync_interval):
            try:
                self.sync()
            except Exception:
                log.exception("fsync of the event log in %s failed", self.log_dir)

    def _descriptor(self, day: str) -> int:
        if day != self._day or self._fd is None:
            if self._fd is not None:
                self._close_fd()  # once a day: the old day's tail is made durable here
            path = self.log_dir / event_file_name(day)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._day = day
        return self._fd

    def _close_fd(self) -> None:
        """Fsync (if written) and close the current descriptor; caller holds the lock."""
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            if self._dirty:
                os.fsync(fd)
        except OSError:
            log.exception("fsync of the event log in %s failed", self.log_dir)
        finally:
            self._dirty = False
            os.close(fd)

    def close(self) -> None:
        """Stop the fsync thread and fsync what it has not yet synced."""
        self._stop.set()
        syncer = self._syncer
        if syncer is not None and syncer is not threading.current_thread():
            syncer.join()
        with self._lock:
            if self._fd is not None:
                self._close_fd()
