"""The event record (MIC Art. 8.2): one JSON object per line, one file per UTC day.

Only this module writes the log. Each event is a single ``os.write`` on an
``O_APPEND`` descriptor, so lines from the server and the CLI never interleave
and a crash leaves at most one torn last line, which the search skips.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EVENT_FILE_PREFIX = "events-"
EVENT_FILE_SUFFIX = ".jsonl"


def event_file_name(day: str) -> str:
    """File holding the events of one UTC day (``YYYY-MM-DD``)."""
    return f"{EVENT_FILE_PREFIX}{day}{EVENT_FILE_SUFFIX}"


def rfc3339(moment: datetime) -> str:
    """UTC timestamp as the contract writes it: ``2026-11-25T12:00:00.123456Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventLog:
    """Appends events to ``log_dir``; thread-safe, so CLI and worker threads may emit too."""

    def __init__(self, log_dir: Path, clock: Callable[[], datetime] | None = None) -> None:
        self.log_dir = log_dir
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._day = ""
        self._fd: int | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record one event; ``None`` fields are left out. Returns the record written."""
        now = self._clock()
        record: dict[str, Any] = {"ts": rfc3339(now), "event": event}
        record.update((k, v) for k, v in fields.items() if v is not None)
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        data = (line + "\n").encode("utf-8", "surrogateescape")
        with self._lock:
            os.write(self._descriptor(now.astimezone(UTC).strftime("%Y-%m-%d")), data)
        return record

    def _descriptor(self, day: str) -> int:
        if day != self._day or self._fd is None:
            if self._fd is not None:
                os.close(self._fd)
            path = self.log_dir / event_file_name(day)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._day = day
        return self._fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
