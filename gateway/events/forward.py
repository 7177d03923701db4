"""Events to syslog (``[log] syslog`` with ``syslog_events = true``), for sites that ship
logs centrally through rsyslog or journald.

The JSON-lines files stay the record; syslog is a copy. A syslog socket can block (a
full ``/dev/log`` queue, a TCP collector that stalls), and emit runs on the event loop, so
emit only puts the line on a bounded queue and a daemon thread sends it. When the queue is
full the copy is dropped and counted, never the record.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any

from gateway.config import SyslogTarget
from gateway.events.anchor import syslog_handler

log = logging.getLogger("gateway.events")
QUEUE_SIZE = 10_000


class SyslogForwarder:
    """An event-log observer sending each record as one syslog message."""

    def __init__(self, target: SyslogTarget) -> None:
        self.target = target
        self.dropped = 0
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="events-syslog", daemon=True)
        self._thread.start()

    def __call__(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        handler: logging.handlers.SysLogHandler | None = None
        while (line := self._queue.get()) is not None:
            try:
                if handler is None:
                    handler = syslog_handler(self.target)
                handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
            except Exception:  # a collector down: try a fresh socket for the next line
                log.warning("cannot send an event to syslog %s", self.target, exc_info=True)
                if handler is not None:
                    handler.close()
                handler = None
        if handler is not None:
            handler.close()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
