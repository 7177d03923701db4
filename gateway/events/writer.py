"""The event record (MIC Art. 8.2): one JSON object per line, one file per UTC day.

Only this module writes the log. Each event is a single ``os.write`` on an
``O_APPEND`` descriptor, so lines from the server and the CLI never interleave
and a crash leaves at most one torn last line, which the search skips.

Each line also carries the hash chain (:mod:`gateway.events.chain`). The server and CLI
processes append to the same day file, so the chain must follow the file's real line
order: an exclusive ``flock`` is held around "find the previous chain value + append",
and the file's tail is read again only when its size is not what this process last
wrote (another process appended). Cost: an fstat, two flocks and one sha256 per event.

A crash can leave a torn last line (no newline). The next writer starts its record on a
new line and chains it to the last *complete* chained record: the torn fragment was never
a whole event, stays in the file for the record, and ``logs verify`` reports it as torn
without calling the chain broken (its neighbours still link).

A message that got 250 must not lose its record in a power cut, yet emit runs on the
event loop and an fsync per event would stall every session. So emit only writes; a
daemon thread fsyncs the day file at most ``sync_interval`` seconds after a write
(default 1 s), and a day change or ``close`` fsyncs what is left.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.events.chain import CHAIN_FIELD, GENESIS, link_hash, previous_day_link, read_tail

EVENT_FILE_PREFIX = "events-"
EVENT_FILE_SUFFIX = ".jsonl"
SYNC_INTERVAL_SECONDS = 1.0

log = logging.getLogger("gateway.events")
# Fields only the writer sets: a caller's value would forge or break the chain.
_CHAIN_KEYS = frozenset({CHAIN_FIELD, "seq", "prev_day", "prev_seq"})
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def event_file_name(day: str) -> str:
    """File holding the events of one UTC day (``YYYY-MM-DD``)."""
    return f"{EVENT_FILE_PREFIX}{day}{EVENT_FILE_SUFFIX}"


def rfc3339(moment: datetime) -> str:
    """UTC timestamp as the contract writes it: ``2026-11-25T12:00:00.123456Z``
    (``isoformat`` of a UTC time, whose ``+00:00`` becomes ``Z``: twice strftime's speed)."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


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
        self._size = -1  # the day file's size after this process's last write; -1: unknown
        self._prev = GENESIS  # chain value of the day's last record, valid while size matches
        self._seq = 0
        self._torn = False
        self._first_link: tuple[bytes, int] | None = None  # (prev_day, prev_seq) for seq 1
        self.write_failures = 0  # events that could not be written (disk full, I/O error)
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        # Called with each record once it is written (metrics, syslog forwarding); they
        # run on the emitting thread and must be quick: a dictionary update, a queue put.
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record one event; ``None`` fields are left out. Returns the record written."""
        stamp = rfc3339(self._clock())
        record: dict[str, Any] = {"ts": stamp, "event": event}
        record.update((k, v) for k, v in fields.items() if v is not None and k not in _CHAIN_KEYS)
        line = _ENCODER.encode(record)
        body = line[:-1].encode("utf-8", "surrogateescape")  # without the closing brace
        day = stamp[:10]  # the UTC date
        with self._lock:
            try:
                self._append(self._descriptor(day), day, body)
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
        for observer in self.observers:
            try:
                observer(record)
            except Exception:  # an observer's bug must not cost the record or the sender
                log.exception("event observer %r failed", observer)
        return record

    def _append(self, fd: int, day: str, body: bytes) -> None:
        """Chain ``body`` to the day's last record and append it, under the file's lock."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size != self._size:
                self._load_tail(fd, size, day)
            seq = self._seq + 1
            if seq == 1 and self._first_link is not None:
                body += b',"prev_day":"%s","prev_seq":%d' % self._first_link
            body += b',"seq":%d}' % seq
            chain = link_hash(self._prev, body)
            data = body[:-1] + b',"chain":"%s"}\n' % chain.encode("ascii")
            if self._torn:
                data = b"\n" + data  # leave the torn fragment on a line of its own
            written = os.write(fd, data)
            if written != len(data):  # a short write (disk full): the next emit re-reads
                self._size = -1
                return
            self._size = size + written
            self._prev, self._seq, self._torn = chain, seq, False
        except BaseException:
            self._size = -1
            raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _load_tail(self, fd: int, size: int, day: str) -> None:
        """Where the day's chain stands: its file's last chained record, or else the last
        chained record of the latest earlier day (the link across days)."""
        tail = read_tail(fd, size)
        self._torn = tail.torn
        self._first_link = None
        if tail.chain is not None:
            self._prev, self._seq = tail.chain, tail.seq
            return
        self._prev, self._seq = GENESIS, 0
        found = previous_day_link(self.log_dir, day)
        if found is not None:
            prev_day, link = found
            self._prev = link.chain
            self._first_link = (prev_day.encode("ascii"), link.seq)

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
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)  # reads its tail
            self._day = day
            self._size = -1  # a new file: find where its chain stands
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


def record_cli_event(log_dir: Path, event: str, **fields: Any) -> None:
    """One event from a CLI command (``actor`` = "cli"), written and fsynced before the
    command exits: admin actions on record (MIC 8.2, MOST 18.4)."""
    events = EventLog(log_dir)
    try:
        events.emit(event, actor="cli", **fields)
    finally:
        events.close()
