"""Log retention for ``mailgate maintenance``: compress finished days, delete expired ones.

MIC Art. 8.2 asks for six months of logs (``log.retention_days``, 183). Compressed, a day
costs about a tenth of the disk; search, verify and export read ``.gz`` days as they read
plain ones. Compression is crash-safe: the ``.gz`` is written to ``.gz.tmp``, fsynced,
checked against the plain file, renamed, and only then is the plain file removed; a crash
at any step leaves the plain file (which search prefers) and the next run starts over.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from gateway.events.blockgz import compress_stream
from gateway.events.search import COMPRESSED_SUFFIX, day_files
from gateway.events.writer import event_file_name

TMP_SUFFIX = ".tmp"
# Files kept beside a day that go with it when it expires (anchor tokens).
SIDE_SUFFIXES = (".tsr",)


@dataclass(slots=True)
class RetentionResult:
    compressed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def apply_retention(
    log_dir: Path, now: datetime, retention_days: int, clock: datetime | None = None
) -> RetentionResult:
    """Delete the days past ``retention_days``, then compress every day before yesterday.

    Today and yesterday stay plain: a writer may still append to yesterday for a moment
    after midnight (clock steps, a CLI started just before), and appending to a ``.gz``
    is not possible. "Today" is the earlier of ``now`` and the real ``clock``, so a
    ``--now`` in the future never compresses the file the running gateway writes to
    (its events would go to a removed file).
    """
    result = RetentionResult()
    result.deleted = expire_days(log_dir, now, retention_days)
    today = min(_utc(now).date(), _utc(clock or datetime.now(UTC)).date())
    for day, path in day_files(log_dir):
        if day < today - timedelta(days=1) and not path.name.endswith(COMPRESSED_SUFFIX):
            compress_day(path)
            result.compressed.append(path.name)
    return result


def expire_days(log_dir: Path, now: datetime, retention_days: int) -> list[str]:
    """Delete every file of each day whose every moment is older than ``retention_days``.

    A day is kept while any moment of it is inside the window, so the law's minimum is
    always met. Its plain, compressed, half-compressed and anchor files all go.
    """
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, got {retention_days}")
    cutoff = _utc(now) - timedelta(days=retention_days)
    deleted: list[str] = []
    for day, _ in day_files(log_dir):
        day_end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC)
        if day_end > cutoff:
            continue
        for path in day_paths(log_dir, day):
            if path.exists():
                path.unlink(missing_ok=True)
                deleted.append(path.name)
    _fsync_dir(log_dir)
    return deleted


def day_paths(log_dir: Path, day: date) -> list[Path]:
    """Every file that belongs to one day: plain, ``.gz``, ``.gz.tmp``, anchor tokens."""
    plain = log_dir / event_file_name(day.isoformat())
    stem = plain.name.removesuffix(".jsonl")
    return [
        plain,
        plain.with_name(plain.name + COMPRESSED_SUFFIX),
        plain.with_name(plain.name + COMPRESSED_SUFFIX + TMP_SUFFIX),
        *(plain.with_name(stem + suffix) for suffix in SIDE_SUFFIXES),
    ]


def compress_day(plain: Path) -> Path:
    """``events-DAY.jsonl`` -> ``events-DAY.jsonl.gz``, crash-safe; returns the ``.gz``.

    The plain file is locked (the writer's ``flock``) while it is read, and removed only
    once the ``.gz`` is durable and decompresses to the same bytes.
    """
    target = plain.with_name(plain.name + COMPRESSED_SUFFIX)
    temporary = target.with_name(target.name + TMP_SUFFIX)
    with plain.open("rb") as source:
        fcntl.flock(source.fileno(), fcntl.LOCK_EX)
        digest = hashlib.sha256()
        with temporary.open("wb") as raw:
            # gzip members of ~16 KiB cut at line ends: the search index points into them,
            # so a hit costs one small member, not the whole day (events/blockgz.py).
            compress_stream(_Digesting(source, digest), raw)
        with temporary.open("rb") as raw:
            os.fsync(raw.fileno())
        if _gz_digest(temporary) != digest.digest():
            temporary.unlink(missing_ok=True)
            raise OSError(f"{temporary}: does not decompress to {plain.name}; kept the plain file")
        os.replace(temporary, target)
        _fsync_dir(plain.parent)
        plain.unlink()
    _fsync_dir(plain.parent)
    return target


class _Digesting:
    """A reader that hashes what is read through it (the plain day, for the check)."""

    def __init__(self, source: BinaryIO, digest: Any) -> None:
        self.source, self.digest = source, digest

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        self.digest.update(chunk)
        return chunk

    def readline(self) -> bytes:
        line = self.source.readline()
        self.digest.update(line)
        return line


def _gz_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
