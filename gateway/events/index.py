"""A per-day key index of the event log, so a search over 6 months reads kilobytes, not gigabytes.

For each day file, ``log.dir/index/events-DAY.idx`` maps the 64-bit hash of every key an
event carries (message id, sender, recipient, client, user, session, queue id) to the
blocks of the day file that hold it: line-aligned 16 KiB ranges of a plain file, or gzip
members of a compressed one (:mod:`gateway.events.blockgz`). A search opens each day's
index, binary-searches the hash and reads only those blocks; every record read is then
checked against the query itself, so a hash collision costs time, never a wrong answer.

The index is a cache and never an authority. It records the day file's identity (inode,
size, mtime) and, for a plain file still being appended, the CRC of the bytes it
covered: a day replaced, compressed or edited since is scanned instead, the appended
tail of today's file is scanned, a day without an index is scanned. Files are written
to a temp name, fsynced and renamed, so ``kill -9`` mid-update leaves the old index or
the new one, and a header checksum plus the exact length refuse anything else.
``maintenance`` calls :func:`update`, which rebuilds only days that changed.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import Any

from gateway.events import blockgz

__all__ = [
    "INDEX_DIR",
    "DayIndex",
    "UpdateReport",
    "build_day",
    "index_path",
    "key_hash",
    "record_keys",
    "update",
]

INDEX_DIR = "index"
_MAGIC = b"MGIDX01\n"
# magic, gz, wide postings, bucket bits, tail_crc, size, mtime_ns, inode, indexed_len,
# n_blocks, n_keys, n_overflow, body_crc, header_crc (over everything before it)
_HEADER = struct.Struct("<8sBBBxIQQQQIIII")
_HEADER_CRC = struct.Struct("<I")
_HEADER_SIZE = 80  # _HEADER + its CRC, padded to 8 so the arrays after it stay aligned
_MAX_BUCKET_BITS = 16  # + the 32 stored bits tell keys apart; collisions cost only time
_SPILL = 0x80000000  # a value with this bit points into the overflow array
_TAIL = 4096  # bytes before indexed_len whose CRC proves an appended file kept its prefix


# -- keys ---------------------------------------------------------------------------------


def bare_address(address: str) -> str:
    """How addresses compare everywhere in search: no angle brackets, case-folded."""
    value = address.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value.casefold()


def bare_id(message_id: str) -> str:
    """Message ids compare without their angle brackets, case kept (RFC 5322 3.6.4)."""
    value = message_id.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def record_keys(record: dict[str, Any]) -> set[str]:
    """The keys one event is found by, ``"KIND\\0value"``; unknown fields are ignored."""
    keys: set[str] = set()
    for value in _strings(record.get("message_id")):
        keys.add("m\0" + bare_id(value))
    for value in _strings(record.get("sender")):
        keys.add("s\0" + bare_address(value))
    for field in ("recipients", "recipient"):
        for value in _strings(record.get(field)):
            keys.add("r\0" + bare_address(value))
    for value in _strings(record.get("user")):
        keys.add("u\0" + bare_address(value))
    for value in _strings(record.get("client")):
        keys.add("c\0" + value.strip())
    for value in _strings(record.get("session")):
        keys.add("S\0" + value.strip())
    for field in ("queue_id", "dsn_queue_id"):
        for value in _strings(record.get(field)):
            keys.add("q\0" + value.strip())
    return keys


def _slot(digest: int, bits: int) -> tuple[int, int]:
    """Where a key's hash goes: its top ``bits`` pick a bucket, its low 32 bits are stored."""
    return (digest >> (64 - bits) if bits else 0), digest & 0xFFFFFFFF


def _bucket_bits(keys: int) -> int:
    """About 16 keys a bucket: the bucket table stays a small part of the index."""
    return max(0, min(_MAX_BUCKET_BITS, keys.bit_length() - 4))


def key_hash(key: str) -> int:
    return int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little")  # fmt: skip


# -- building -----------------------------------------------------------------------------


def index_path(log_dir: Path, day_file: Path) -> Path:
    """``log_dir/index/events-DAY.idx`` for ``events-DAY.jsonl`` and ``events-DAY.jsonl.gz``."""
    name = day_file.name.removesuffix(".gz").removesuffix(".jsonl")
    return log_dir / INDEX_DIR / f"{name}.idx"


def _plain_blocks(data: bytes) -> tuple[list[int], int]:
    """Line-aligned block starts of a plain file, and the end of its last complete line."""
    complete = data.rfind(b"\n") + 1
    starts, pos = [], 0
    while pos < complete:
        starts.append(pos)
        cut = data.find(b"\n", min(pos + blockgz.BLOCK_BYTES, complete) - 1)
        pos = complete if cut < 0 else cut + 1
    return [*starts, complete], complete


def _gz_blocks(data: bytes) -> tuple[list[int], list[bytes], int]:
    """Block starts (members grouped so each block ends on a line end) and their text."""
    offsets: list[int] = []
    texts: list[bytes] = []
    pending: list[bytes] = []
    start = end = 0
    for begin, finish, text in blockgz.members(data):
        if not pending:
            start = begin
        pending.append(text)
        end = finish
        if text.endswith(b"\n"):
            offsets.append(start)
            texts.append(b"".join(pending))
            pending = []
    if pending:
        offsets.append(start)
        texts.append(b"".join(pending))
    return [*offsets, end], texts, end


def build_day(day_file: Path) -> bytes:
    """The index file of one day file, as bytes (see the module docstring for the layout)."""
    from gateway.events.search import decode_line  # search imports this module

    with open(day_file, "rb") as handle:
        data = handle.read()
        status = os.fstat(handle.fileno())
    gz = day_file.name.endswith(".gz")
    if gz:
        offsets, texts, indexed_len = _gz_blocks(data)
    else:
        offsets, indexed_len = _plain_blocks(data)
        texts = [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    postings: dict[str, list[int]] = {}
    for number, text in enumerate(texts):
        for line in text.split(b"\n"):
            record = decode_line(line) if line.strip() else None
            if record is None:
                continue
            for key in record_keys(record):
                found = postings.get(key)
                if found is None:
                    postings[key] = [number]
                elif found[-1] != number:
                    found.append(number)
    bits = _bucket_bits(len(postings))
    by_slot: dict[tuple[int, int], list[int]] = {}
    for key, blocks in postings.items():
        slot = _slot(key_hash(key), bits)
        if slot in by_slot:  # two keys, one slot: keep both lists, the check sorts it out
            by_slot[slot] = sorted(set(by_slot[slot]) | set(blocks))
        else:
            by_slot[slot] = blocks
    slots = sorted(by_slot)
    wide = len(offsets) > 0xFFFF
    buckets = array("I", bytes(4 * ((1 << bits) + 1)))
    lows, values, overflow = array("I"), array("I"), array("I" if wide else "H")
    for bucket, low in slots:
        buckets[bucket + 1] += 1
        lows.append(low)
        blocks = by_slot[(bucket, low)]
        if len(blocks) == 1:
            values.append(blocks[0])
        else:  # several blocks: [count, block...] in the overflow array
            values.append(_SPILL | len(overflow))
            overflow.append(len(blocks))
            overflow.extend(blocks)
    for bucket in range(1 << bits):
        buckets[bucket + 1] += buckets[bucket]
    body = b"".join(
        (array("Q", offsets).tobytes(), buckets.tobytes(), lows.tobytes(), values.tobytes(),
         overflow.tobytes())
    )  # fmt: skip
    tail = data[max(0, indexed_len - _TAIL) : indexed_len]
    header = _HEADER.pack(
        _MAGIC, gz, wide, bits, zlib.crc32(tail), len(data), status.st_mtime_ns, status.st_ino,
        indexed_len, len(offsets) - 1, len(slots), len(overflow), zlib.crc32(body),
    )  # fmt: skip
    header += _HEADER_CRC.pack(zlib.crc32(header))
    return header.ljust(_HEADER_SIZE, b"\0") + body


def _write_atomic(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _build_into(day_file: str, target: str) -> str:
    """Process-pool job: build one day's index and write it in place."""
    _write_atomic(Path(target), build_day(Path(day_file)))
    return target


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Coverage:
    """What an index says about the day file as it is now: up to where it can be trusted."""

    indexed_len: int  # bytes of the day file the index covers (the rest is to be scanned)
    complete: bool  # the whole file as it is now is covered


class DayIndex:
    """One day's index, memory-mapped; :meth:`open` returns None for anything unusable."""

    def __init__(self, buffer: mmap.mmap, fields: tuple[Any, ...]) -> None:
        self._buffer = buffer
        (_, self.gz, wide, self.bits, self.tail_crc, self.size, self.mtime_ns, self.inode,
         self.indexed_len, n_blocks, n_keys, n_post, self.body_crc) = fields  # fmt: skip
        view = memoryview(buffer)
        pos = _HEADER_SIZE
        self.offsets = view[pos : pos + 8 * (n_blocks + 1)].cast("Q")
        pos += 8 * (n_blocks + 1)
        self.buckets = view[pos : pos + 4 * ((1 << self.bits) + 1)].cast("I")
        pos += 4 * ((1 << self.bits) + 1)
        self.lows = view[pos : pos + 4 * n_keys].cast("I")
        pos += 4 * n_keys
        self.values = view[pos : pos + 4 * n_keys].cast("I")
        pos += 4 * n_keys
        width = 4 if wide else 2
        self.overflow = view[pos : pos + width * n_post].cast("I" if wide else "H")
        self._body = view[_HEADER_SIZE:]

    @classmethod
    def open(cls, path: Path, verify: bool = False) -> DayIndex | None:
        """The index at ``path`` if whole and consistent; ``verify`` also checks the body CRC."""
        try:
            with open(path, "rb") as handle:
                buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # missing, unreadable or empty
            return None
        try:
            if len(buffer) < _HEADER_SIZE:
                raise ValueError("short")
            fields = _HEADER.unpack_from(buffer, 0)
            (crc,) = _HEADER_CRC.unpack_from(buffer, _HEADER.size)
            if fields[0] != _MAGIC or crc != zlib.crc32(buffer[: _HEADER.size]):
                raise ValueError("header")
            n_blocks, n_keys, n_post = fields[9], fields[10], fields[11]
            width = 4 if fields[2] else 2
            if fields[3] > _MAX_BUCKET_BITS:
                raise ValueError("bucket bits")
            expected = _HEADER_SIZE + 8 * (n_blocks + 1) + 4 * ((1 << fields[3]) + 1) + 8 * n_keys
            if len(buffer) != expected + width * n_post:
                raise ValueError("length")
            index = cls(buffer, fields)
        except (ValueError, TypeError, struct.error):
            buffer.close()
            return None
        if verify and zlib.crc32(index._body) != index.body_crc:
            index.close()
            return None
        return index

    def coverage(self, day_file: Path) -> Coverage | None:
        """How much of ``day_file`` (as it is now) this index covers; None if it is stale.

        A compressed day must be the very file indexed. A plain day may have grown (the
        writer appends today's events): the covered prefix stands while the inode is the
        same and the CRC of its last 4 KiB still matches.
        """
        try:
            status = os.stat(day_file)
        except OSError:
            return None
        if status.st_ino != self.inode or bool(self.gz) != day_file.name.endswith(".gz"):
            return None
        if status.st_size == self.size and status.st_mtime_ns == self.mtime_ns:
            return Coverage(self.indexed_len, complete=self.indexed_len == self.size)
        if self.gz or status.st_size < self.indexed_len:
            return None
        start = max(0, self.indexed_len - _TAIL)
        try:
            with open(day_file, "rb") as handle:
                handle.seek(start)
                tail = handle.read(self.indexed_len - start)
        except OSError:
            return None
        if zlib.crc32(tail) != self.tail_crc:
            return None
        return Coverage(self.indexed_len, complete=False)

    def blocks(self, keys: Iterable[str]) -> list[int]:
        """Sorted block numbers that may hold an event carrying any of ``keys``."""
        found: set[int] = set()
        for key in keys:
            bucket, low = _slot(key_hash(key), self.bits)
            begin, end = self.buckets[bucket], self.buckets[bucket + 1]
            at = bisect_left(self.lows, low, begin, end)
            if at < end and self.lows[at] == low:
                value = self.values[at]
                if value & _SPILL:
                    start = value & ~_SPILL
                    found.update(self.overflow[start + 1 : start + 1 + self.overflow[start]])
                else:
                    found.add(value)
        return sorted(v for v in found if v < len(self.offsets) - 1)

    def read_blocks(self, day_file: Path, numbers: list[int]) -> Iterator[bytes]:
        """The text of the given blocks, read (and inflated) one by one."""
        if not numbers:
            return
        with open(day_file, "rb") as handle:
            for number in numbers:
                start, end = self.offsets[number], self.offsets[number + 1]
                handle.seek(start)
                raw = handle.read(end - start)
                yield blockgz.inflate(raw) if self.gz else raw

    def close(self) -> None:
        for view in (self.offsets, self.buckets, self.lows, self.values, self.overflow, self._body):
            view.release()
        self._buffer.close()


# -- keeping it up to date ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateReport:
    built: list[str]
    kept: int
    removed: list[str]


def update(log_dir: Path, workers: int | None = None) -> UpdateReport:
    """Index every day file not indexed as it is now; drop indexes of days that are gone.

    Days are built in parallel on ``workers`` processes (default: every core); each
    index file replaces the old one atomically, so an interrupted update loses only the
    days it had not reached, and a damaged index (checked in full here) is rebuilt.
    """
    from gateway.events.search import day_files  # search imports this module

    folder = log_dir / INDEX_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".*.tmp"):  # a killed update's half-written file
        leftover.unlink(missing_ok=True)
    wanted: dict[Path, Path] = {}
    kept = 0
    for _, day_file in day_files(log_dir):
        target = index_path(log_dir, day_file)
        index = DayIndex.open(target, verify=True)
        fresh = False
        if index is not None:
            coverage = index.coverage(day_file)
            fresh = coverage is not None and coverage.complete
            index.close()
        if fresh:
            kept += 1
        else:
            wanted[target] = day_file
    removed = []
    for stale in folder.glob("*.idx"):
        if stale not in wanted and not _has_day(log_dir, stale):
            stale.unlink(missing_ok=True)
            removed.append(stale.name)
    jobs = [(str(day), str(target)) for target, day in sorted(wanted.items())]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        built = [_build_into(day, target) for day, target in jobs]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            built = list(pool.map(_build_into, *zip(*jobs, strict=True)))
    return UpdateReport([Path(b).name for b in built], kept, sorted(removed))


def _has_day(log_dir: Path, index_file: Path) -> bool:
    stem = index_file.name.removesuffix(".idx")
    return (log_dir / f"{stem}.jsonl").is_file() or (log_dir / f"{stem}.jsonl.gz").is_file()
