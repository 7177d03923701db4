"""Day files compressed as many small gzip members, so one event can be read without the day.

A ``.gz`` made of concatenated members is an ordinary gzip file (``zcat``, ``zgrep``,
:func:`gzip.open` read it whole), but each member can also be inflated on its own. The
index (:mod:`gateway.events.index`) remembers where members start, so a search reads a
few 16 KiB members instead of inflating 180 days. Members end on a line end, so a block
always holds whole records. A day compressed as one single member still works: it is
then one block, read whole (correct, only slower).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["BLOCK_BYTES", "compress", "compress_bytes", "compress_stream", "inflate", "members"]

BLOCK_BYTES = 16 * 1024  # uncompressed bytes per member: ~35 us to inflate one
_FEED = 64 * 1024


def compress_bytes(data: bytes, level: int = 6, block: int = BLOCK_BYTES) -> bytes:
    """``data`` (JSON lines) as gzip members of about ``block`` bytes, cut after a newline."""
    out: list[bytes] = []
    start, size = 0, len(data)
    while start < size:
        end = data.find(b"\n", min(start + block, size) - 1)
        end = size if end < 0 else end + 1
        packer = zlib.compressobj(level, zlib.DEFLATED, 31)
        out.append(packer.compress(data[start:end]) + packer.flush())
        start = end
    return b"".join(out)


def compress_stream(
    source: BinaryIO, sink: BinaryIO, level: int = 6, block: int = BLOCK_BYTES
) -> None:
    """``compress_bytes`` a block at a time: the same bytes, without the day in memory."""
    while chunk := source.read(block):
        if not chunk.endswith(b"\n"):
            chunk += source.readline()
        packer = zlib.compressobj(level, zlib.DEFLATED, 31)
        sink.write(packer.compress(chunk) + packer.flush())


def compress(src: Path, dst: Path, level: int = 6) -> None:
    """Write ``src`` compressed in members to ``dst`` durably (temp file, fsync, rename).

    ``maintenance`` should compress day files with this rather than one gzip stream:
    the bytes inflate to the same file, and the index can then fetch single blocks.
    """
    data = src.read_bytes()
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(compress_bytes(data, level))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, dst)


def members(data: bytes | memoryview) -> Iterator[tuple[int, int, bytes]]:
    """``(start, end, inflated)`` for each member of a gzip file held in ``data``.

    A truncated or corrupt tail ends the walk: what inflated before it is yielded (as
    :func:`gateway.events.search.read_day` does), trailing zero padding is ignored.
    """
    view = memoryview(data)
    size, pos = len(view), 0
    while pos < size:
        if view[pos] == 0:  # padding some tools append after the last member
            return
        inflater = zlib.decompressobj(31)
        parts: list[bytes] = []
        fed = pos
        try:
            while not inflater.eof and fed < size:
                chunk = view[fed : fed + _FEED]
                fed += len(chunk)
                parts.append(inflater.decompress(chunk))
        except zlib.error:
            if parts:
                yield pos, size, b"".join(parts)
            return
        end = fed - len(inflater.unused_data) if inflater.eof else size
        yield pos, end, b"".join(parts)
        if not inflater.eof:
            return
        pos = end


def inflate(data: bytes | memoryview) -> bytes:
    """Every member in ``data`` inflated and joined (one block may hold several)."""
    return b"".join(part for _, _, part in members(data))
