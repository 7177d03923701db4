"""The hash chain over the event log: tamper evidence for MIC Art. 8.2's six months.

Every record the writer appends ends with ``,"seq":N,"chain":"<hex>"}``. ``seq`` counts
the day's chained records from 1; ``chain`` is
``sha256(previous chain value + "\\n" + the line's bytes without its chain field)``.
A day's first record (seq 1) also names the day it continues (``prev_day``) and that
day's last seq (``prev_seq``), and its previous chain value is that record's chain; a
chain with no earlier day starts from :data:`GENESIS`.

The hash covers the exact bytes written, not a re-serialisation, so the writer computes
it from the line it already built (one sha256 per event) and the verifier needs no
canonical JSON. The chain is the gateway's addition: records without it (imported, or
written before chains) stay searchable and are reported as unchained.

Only the writer appends; this module reads: the tail of a day (to continue a chain) and
whole days (to verify one).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

GENESIS = "0" * 64
CHAIN_FIELD = "chain"
# The end of every chained line, as the writer writes it (compact JSON, chain last).
_TAIL = re.compile(rb',"seq":(\d+),"chain":"([0-9a-f]{64})"\}$')
_PREV = re.compile(rb'"prev_day":"(\d{4}-\d{2}-\d{2})","prev_seq":(\d+),"seq":1,"chain":')
_TAIL_CHUNK = 65536
# The first read from the end: a record is a few hundred bytes, and with several
# processes writing one day file each of them re-reads the tail at nearly every event.
_FIRST_TAIL_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class Link:
    """One chained line: where it is, its seq, its stored chain value and its hash input."""

    line: int  # 1-based line number in the day file
    seq: int
    chain: str
    body: bytes  # the line without its chain field: what the hash covers
    prev_day: str | None = None
    prev_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Tail:
    """Where a day's chain stands, for the next writer."""

    chain: str | None  # the last chained record's value; None: the day holds none
    seq: int  # its seq (0 when none)
    torn: bool  # the file does not end with a newline: a crash cut the last write


def link_hash(previous: str, body: bytes) -> str:
    """The chain value of a record whose line, without its chain field, is ``body``."""
    return hashlib.sha256(previous.encode("ascii") + b"\n" + body).hexdigest()


def parse_link(raw: bytes, line_no: int) -> Link | None:
    """The chain part of one line (without its newline), or None if it carries none."""
    match = _TAIL.search(raw)
    if match is None:
        return None
    body = raw[: match.start(2) - len(b',"chain":"')] + b"}"
    prev = _PREV.search(raw) if match.group(1) == b"1" else None
    return Link(
        line=line_no,
        seq=int(match.group(1)),
        chain=match.group(2).decode("ascii"),
        body=body,
        prev_day=prev.group(1).decode("ascii") if prev else None,
        prev_seq=int(prev.group(2)) if prev else None,
    )


def read_tail(fd: int, size: int) -> Tail:
    """The last chained record of an open day file of ``size`` bytes, reading backwards.

    Reads 4 KiB from the end, then 64 KiB at a time, so continuing a chain costs one
    small read even on a day of millions of events (and when another process wrote last).
    """
    if size == 0:
        return Tail(None, 0, False)
    end = size
    carry = b""
    step = _FIRST_TAIL_CHUNK
    torn = skip_fragment = False
    while end > 0:
        start = max(0, end - step)
        step = _TAIL_CHUNK
        chunk = os.pread(fd, end - start, start) + carry
        if end == size:
            torn = skip_fragment = not chunk.endswith(b"\n")
        lines = chunk.split(b"\n")
        carry = lines[0] if start > 0 else b""
        complete = lines[1:] if start > 0 else lines
        if skip_fragment and complete:  # however long, the torn fragment is no link
            complete = complete[:-1]
            skip_fragment = False
        for raw in reversed(complete):
            link = parse_link(raw.rstrip(b"\r"), 0)
            if link is not None:
                return Tail(link.chain, link.seq, torn)
        end = start
    return Tail(None, 0, torn)


def last_link_of_day(path: Path) -> Link | None:
    """The last chained record of a finished day, plain or compressed."""
    if not path.name.endswith(".gz"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            tail = read_tail(fd, size)
        finally:
            os.close(fd)
        if tail.chain is None:
            return None
        return Link(line=0, seq=tail.seq, chain=tail.chain, body=b"")
    last: Link | None = None
    for link in iter_links(path):
        if isinstance(link, Link):
            last = link
    return last


def previous_day_link(log_dir: Path, day: str) -> tuple[str, Link] | None:
    """The latest day before ``day`` that holds a chained record, and that record."""
    from gateway.events.search import day_files  # search imports the writer, which imports us

    target = date.fromisoformat(day)
    for found, path in reversed(day_files(log_dir)):
        if found >= target:
            continue
        link = last_link_of_day(path)
        if link is not None:
            return found.isoformat(), link
    return None


def iter_links(path: Path) -> list[Link | tuple[int, bytes]]:
    """Every line of a day file: a :class:`Link`, or ``(line, raw)`` for a line without one.

    A truncated ``.gz`` yields what it holds; the caller reports the rest as lost.
    """
    from gateway.events.search import open_day

    out: list[Link | tuple[int, bytes]] = []
    try:
        handle = open_day(path)
    except FileNotFoundError:
        return out
    with handle:
        try:
            for number, raw in enumerate(handle, start=1):
                line = raw.rstrip(b"\n").rstrip(b"\r")
                link = parse_link(line, number)
                out.append(link if link is not None else (number, line))
        except (OSError, EOFError):
            out.append((-1, b""))  # marks a cut-short compressed file
    return out
