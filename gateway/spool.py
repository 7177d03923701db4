"""The gateway's own spool: message bodies on disk and the durable retry queue.

Only this module writes under ``data_dir/spool``. Two areas:

* ``incoming/``: bodies of messages still in DATA, spilled from memory once they
  outgrow ``smtp.spill_threshold``. Nothing here was ever acknowledged, so
  whatever a crash leaves behind is deleted at start.
* ``queue/``: messages the gateway answered 250 for but could not hand to every
  next hop yet. ``ID.eml`` is written and fsynced first, then ``ID.json`` (the
  envelope and per-recipient state) by write-fsync-rename, then the folder is
  fsynced. The JSON file's presence is the commit point: a crash at any instant
  leaves either no entry (the client got no 250 and retries) or a whole one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
NEW_BODY_IN_MEMORY = 1 << 20  # bytes of a gateway-made body kept in memory
_counter = itertools.count()
_pid_tag = ""  # see tag_queue_ids_with_pid


def new_queue_id() -> str:
    """Sortable, unique id: milliseconds since the epoch, a counter, randomness (and the
    PID when :func:`tag_queue_ids_with_pid` was called)."""
    millis = int(time.time() * 1000)
    counter = next(_counter) % 0x1000000
    return f"{millis:011X}{counter:06X}{_pid_tag}{secrets.token_hex(2).upper()}"


def tag_queue_ids_with_pid() -> None:
    """With ``smtp.processes`` > 1 several processes share the spool and every one's
    counter starts at 0: the PID (at most 2^22 on Linux) keeps their ids apart. Called
    once at start; with one process the ids keep their shorter form."""
    global _pid_tag
    _pid_tag = f"{os.getpid() % 0x1000000:06X}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_fields(section: bytes, names: frozenset[str]) -> bytes:
    """``section`` without the fields called one of ``names`` (lower case), folded
    continuation lines included (RFC 5322 2.2.3)."""
    kept: list[bytes] = []
    dropping = False
    for line in section.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower().decode("latin-1")
        dropping = bool(line) and name in names
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept)


def header_section(data: bytes) -> bytes:
    """The header section at the start of ``data`` (up to the blank line), or all of it."""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


class Body:
    """A finished message body (CRLF lines, dot-unstuffed), in memory or in one file.

    ``prefix`` holds header fields the gateway puts on top (Received, and on submission
    a missing Date/Message-ID) when the rest is in a spill file: they are only known
    once DATA ends, and rewriting a 20 MiB file to prepend them would cost a copy.
    """

    def __init__(
        self,
        size: int,
        headers: bytes,
        data: bytes | None,
        path: Path | None,
        prefix: bytes = b"",
    ) -> None:
        self.size = size
        self.headers = headers  # the raw header section, for parsing Message-ID and the like
        self._data = data
        self.path = path
        self._prefix = prefix if data is None else b""

    @classmethod
    def from_bytes(cls, data: bytes) -> Body:
        return cls(len(data), header_section(data), data, None)

    @classmethod
    def from_file(cls, path: Path, headers: bytes) -> Body:
        return cls(path.stat().st_size, headers, None, path)

    @property
    def prefix(self) -> bytes:
        """Header fields that go on top of a spilled body's file (empty in memory)."""
        return self._prefix

    @property
    def in_memory(self) -> bool:
        return self._data is not None

    def read(self) -> bytes:
        """The whole body; for bodies on disk this reads the file (keep that off the loop)."""
        if self._data is not None:
            return self._data
        assert self.path is not None
        return self._prefix + self.path.read_bytes()

    def line_chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """Chunks of about ``size`` bytes, each ending at a line end, so each starts a line."""
        if self._data is not None:
            yield self._data
            return
        assert self.path is not None
        if self._prefix:
            yield self._prefix
        with self.path.open("rb") as handle:
            while chunk := handle.read(size):
                if not chunk.endswith(b"\n"):
                    chunk += handle.readline()
                yield chunk

    def with_prefix(self, fields: bytes) -> Body:
        """The same message with header ``fields`` on top. A body on disk shares its file
        (no copy of 28 MB for one header field): discard only one of the two."""
        if self._data is not None:
            return Body.from_bytes(fields + self._data)
        return Body(
            self.size + len(fields), fields + self.headers, None, self.path, fields + self._prefix
        )

    def discard(self) -> None:
        """Forget the body; removes its spill file, if any."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self._data = None


class BodyWriter:
    """Collects DATA in memory and spills it to ``incoming/`` past a threshold.

    ``write`` only appends to memory, so the event loop never touches the disk;
    once spilled, ``needs_flush`` says a megabyte is waiting and ``flush`` writes it
    from a worker thread.
    """

    def __init__(self, incoming: Path, queue_id: str, spill_threshold: int) -> None:
        self._incoming = incoming
        self._queue_id = queue_id
        self._threshold = spill_threshold
        self._buffer = bytearray()
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self.size = 0

    @property
    def needs_flush(self) -> bool:
        limit = CHUNK if self._path is not None else self._threshold
        return len(self._buffer) > limit

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._buffer += data

    async def flush(self) -> None:
        """Move what is buffered to the spill file (creating it), off the event loop."""
        pending, self._buffer = bytes(self._buffer), bytearray()
        await asyncio.to_thread(self._append, pending)

    def _append(self, data: bytes) -> None:
        if self._file is None:
            self._path = self._incoming / f"{self._queue_id}.tmp"
            self._file = self._path.open("wb", buffering=0)
        self._file.write(data)

    async def finish(self, headers: bytes, prefix: bytes = b"") -> Body:
        """Seal the body: ``headers`` is the header section seen while reading DATA,
        ``prefix`` the fields the gateway adds on top."""
        size = self.size + len(prefix)
        if self._path is None:
            data = b"".join((prefix, self._buffer))
            self._buffer = bytearray()
            return Body(size, prefix + headers, data, None)
        await self.flush()
        assert self._file is not None
        await asyncio.to_thread(self._file.close)
        return Body(size, prefix + headers, None, self._path, prefix)

    def abort(self) -> None:
        """The transaction died (lost connection, error): remove anything written."""
        if self._file is not None:
            self._file.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        self._buffer = bytearray()


@dataclass(slots=True)
class QueueEntry:
    """The durable state of one spooled message (``queue/ID.json``)."""

    queue_id: str
    sender: str
    pending: list[str]  # recipients still to deliver
    arrival: float  # epoch seconds the gateway accepted it
    next_attempt: float
    attempts: int = 0
    message_id: str | None = None
    last_error: dict[str, str] = field(default_factory=dict)  # recipient -> last reply
    failed: list[dict[str, str]] = field(default_factory=list)  # permanent failures so far
    # Members a group delivered to -> that group, as the sender named it (for bounces).
    original: dict[str, str] = field(default_factory=dict)


class Spool:
    """Owns ``data_dir/spool``: spill files for DATA and the retry queue."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.queue = root / "queue"
        for folder in (self.incoming, self.queue):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def clear_incoming(self) -> int:
        """Delete spill files of transactions that never got a 250 (left by a crash)."""
        stale = list(self.incoming.glob("*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def body_writer(self, queue_id: str, spill_threshold: int) -> BodyWriter:
        return BodyWriter(self.incoming, queue_id, spill_threshold)

    def with_header_edits(
        self, body: Body, add: Sequence[tuple[str, str]], remove: frozenset[str], queue_id: str
    ) -> Body:
        """A copy of ``body`` with the ``remove`` fields (lower-case names) dropped from
        its header section and ``add`` put on top (blocking: run in a thread). A body on
        disk is copied to a new spill file; the caller discards both when done."""
        added = b"".join(f"{name}: {value}\r\n".encode() for name, value in add)

        def edit(head: bytes) -> bytes:
            return added + (drop_fields(head, remove) if remove else head)

        return self.with_header_section(body, edit, queue_id)

    def with_header_section(
        self, body: Body, edit: Callable[[bytes], bytes], queue_id: str
    ) -> Body:
        """A copy of ``body`` whose header section is ``edit(section)`` (blocking)."""
        if body.in_memory:
            data = body.read()
            cut = len(header_section(data))
            return Body.from_bytes(edit(data[:cut]) + data[cut:])
        target = self.incoming / f"{queue_id}.{secrets.token_hex(4)}.tmp"
        chunks = body.line_chunks()
        start = b""
        for chunk in chunks:  # gather the whole header section (at most max_header_bytes)
            start += chunk
            if b"\r\n\r\n" in start:
                break
        cut = len(header_section(start))
        with target.open("wb") as out:
            out.write(edit(start[:cut]) + start[cut:])
            for chunk in chunks:
                out.write(chunk)
        return Body.from_file(target, edit(body.headers))

    def new_body(self, data: bytes, queue_id: str) -> Body:
        """A body made by the gateway (a signed or encrypted message): in memory when
        small, else in a spill file like a large DATA (blocking: run in a thread)."""
        if len(data) <= NEW_BODY_IN_MEMORY:
            return Body.from_bytes(data)
        target = self.incoming / f"{queue_id}.{secrets.token_hex(4)}.tmp"
        target.write_bytes(data)
        return Body.from_file(target, header_section(data))

    def body_path(self, queue_id: str) -> Path:
        return self.queue / f"{queue_id}.eml"

    def _entry_path(self, queue_id: str) -> Path:
        return self.queue / f"{queue_id}.json"

    def enqueue(self, entry: QueueEntry, body: Body) -> None:
        """Make ``entry`` durable with its own copy of ``body`` (blocking: run in a thread)."""
        target = self.body_path(entry.queue_id)
        partial = target.with_suffix(".eml.part")
        with partial.open("wb") as handle:
            for chunk in body.line_chunks():
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
        self.save(entry)

    def save(self, entry: QueueEntry) -> None:
        """Atomically replace the entry's state file and fsync it and the folder."""
        target = self._entry_path(entry.queue_id)
        partial = target.with_suffix(".json.part")
        data = json.dumps(asdict(entry), ensure_ascii=False).encode("utf-8")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, target)
        fsync_dir(self.queue)

    def remove(self, queue_id: str) -> None:
        """Drop a finished entry: state first, so a crash never leaves state without a body."""
        self._entry_path(queue_id).unlink(missing_ok=True)
        self.body_path(queue_id).unlink(missing_ok=True)
        fsync_dir(self.queue)

    def body(self, queue_id: str) -> Body:
        path = self.body_path(queue_id)
        with path.open("rb") as handle:
            head = handle.read(65536)
        return Body.from_file(path, header_section(head))

    def load(self) -> tuple[list[QueueEntry], list[str]]:
        """Every committed entry, and a description of each unreadable one (left in place)."""
        entries, problems = [], []
        for path in sorted(self.queue.glob("*.json")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                entry = QueueEntry(**raw)
                if not self.body_path(entry.queue_id).exists():
                    raise ValueError("body file missing")
            except (OSError, ValueError, TypeError) as exc:
                problems.append(f"{path.name}: {exc}")
                continue
            entries.append(entry)
        return entries, problems

    def recover(self) -> int:
        """At start, before anything writes: drop what a crash left half-done (partial files,
        bodies whose state file was never committed, spill files). Never call this while
        the gateway runs: an enqueue in progress looks exactly like such leftovers."""
        removed = self.clear_incoming()
        for leftover in self.queue.glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        for orphan in self.queue.glob("*.eml"):
            if not self._entry_path(orphan.stem).exists():
                orphan.unlink(missing_ok=True)
                removed += 1
        return removed
