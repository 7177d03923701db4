"""Reading the days a query needs: through the index where it covers them, scanning elsewhere.

The index (:mod:`gateway.events.index`) only narrows down which blocks to read; every
record is still decoded and checked by the caller's predicate, so an index that is
missing, stale or wrong about a block can make a search slower, never wrong. Scans skip
``json.loads`` for lines that cannot match: a line is decoded only if it contains one
of the query's lower-cased ASCII "needles", a backslash or one of the eleven non-ASCII
characters that case-fold to ASCII letters (either could spell a needle differently),
which keeps a scan of today's 30 MB file well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from gateway.events import blockgz
from gateway.events.index import DayIndex, bare_address, bare_id, index_path
from gateway.events.search import (
    COMPRESSED_SUFFIX,
    Query,
    day_files,
    day_lines,
    decode_json,
    sort_key,
)

__all__ = ["Needles", "key_needles", "query_plan", "search_days"]

_FOLDED_KINDS = "sru"  # sender, recipient, user: addresses, compared case-insensitively

Record = dict[str, Any]
Hit = tuple[Record, str]  # a record and its JSON text as stored


def query_plan(query: Query) -> tuple[frozenset[str] | None, Needles | None]:
    """The index key to look up (None: scan) and the needles a matching line must contain.

    One key is enough: the most selective one the query names. A domain (``@x.vn``)
    is not a key; it is scanned with its text as the needle.
    """
    for kind, value, normal in (
        ("m", query.message_id, bare_id),
        ("S", query.session, str.strip),
        ("s", query.sender, bare_address),
        ("r", query.recipient, bare_address),
        ("u", query.user, bare_address),
        ("c", query.client, str.strip),
    ):
        if value is not None and not (kind in "sru" and value.strip().startswith("@")):
            key = f"{kind}\0{normal(value)}"
            return frozenset([key]), key_needles([key])
    for text in (query.sender, query.recipient, query.user, query.reason, query.event):
        if text is not None and text.strip():
            return None, _needles([text.strip()], fold=True)
    return None, None


def key_needles(keys: list[str] | frozenset[str]) -> Needles | None:
    """Needles for index keys (``"KIND\\0value"``); None when one cannot be a needle.

    Addresses compare case-insensitively, so their needles are looked for in lower-cased
    text; ids, sessions and clients compare exactly, so theirs in the text as it is.
    """
    fold = any(key[0] in _FOLDED_KINDS for key in keys)
    return _needles([key.partition("\0")[2] for key in keys], fold=fold)


# The only characters outside ASCII whose case folding is ASCII (checked over all of
# Unicode), by the UTF-8 bytes a line holding one contains: the seven ligatures share
# their first two bytes, so one look-up covers them. A record spelling "k" as the Kelvin
# sign must still match an ASCII query.
_FOLDS_TO_ASCII = {
    b"\xc3\x9f": "s",  # ß -> ss
    b"\xc5\xbf": "s",  # ſ -> s
    b"\xe1\xba\x9e": "s",  # ẞ -> ss
    b"\xe2\x84\xaa": "k",  # K (Kelvin) -> k
    b"\xef\xac": "filst",  # U+FB00-FB06: ff fi fl ffi ffl st st
}


@dataclass(frozen=True, slots=True)
class Needles:
    """Byte strings one of which a line must hold to be decoded; ``fold``: look for them
    in the lower-cased line (the query compares case-insensitively)."""

    texts: tuple[bytes, ...]
    fold: bool


def _needles(texts: list[str], fold: bool) -> Needles | None:
    """What a line must contain to be decoded: the texts (lower-cased when ``fold``), a
    backslash (a JSON escape can spell any character), and when folding the bytes of any
    non-ASCII character that folds to letters of the texts. None when a text is not
    printable ASCII: then every line is decoded."""
    found: list[bytes] = [b"\\"]
    for text in texts:
        if not text or not text.isascii() or not text.isprintable():
            return None
        if not fold:
            found.append(text.encode("ascii"))
            continue
        folded = text.casefold()
        found.append(folded.encode("ascii"))
        found += [raw for raw, letters in _FOLDS_TO_ASCII.items() if set(letters) & set(folded)]
    return Needles(tuple(dict.fromkeys(found)), fold)


def search_days(
    log_dir: Path,
    first: date | None,
    last: date | None,
    keys: frozenset[str] | None,
    needles: Needles | None,
    accept: Callable[[Record], bool],
    progress: Callable[[int, int, date], None] | None = None,
) -> Iterator[Hit]:
    """Records ``accept`` takes, with their JSON text, from the days between ``first`` and
    ``last``, in time order."""
    days = [
        (day, path)
        for day, path in day_files(log_dir)
        if (first is None or day >= first) and (last is None or day <= last)
    ]
    for done, (day, path) in enumerate(days):
        if progress is not None:
            progress(done, len(days), day)
        found = [hit for hit in _day_records(log_dir, path, keys, needles) if accept(hit[0])]
        found.sort(key=lambda hit: sort_key(hit[0]))
        yield from found


def _day_records(
    log_dir: Path, path: Path, keys: frozenset[str] | None, needles: Needles | None
) -> Iterator[Hit]:
    index = DayIndex.open(index_path(log_dir, path)) if keys is not None else None
    coverage = index.coverage(path) if index is not None else None
    if index is None or coverage is None or keys is None:
        if index is not None:
            index.close()
        yield from _scan(path, needles)
        return
    try:
        for text in index.read_blocks(path, index.blocks(keys)):
            yield from _records(text, needles)
    except OSError:  # replaced or removed while read: read it whole, as it now is
        index.close()
        yield from _scan(path, needles)
        return
    index.close()
    if not coverage.complete:  # today's file grew since maintenance indexed it
        yield from _scan(path, needles, start=coverage.indexed_len)


def _scan(path: Path, needles: Needles | None, start: int = 0) -> Iterator[Hit]:
    """Every record of a day (from byte ``start`` of a plain file) that may match."""
    if needles is None and start == 0:
        yield from _stream(path)
        return
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            data = handle.read()
    except FileNotFoundError:  # purged between listing and reading
        return
    if path.name.endswith(COMPRESSED_SUFFIX):
        data = blockgz.inflate(data)
    yield from _records(data, needles)


def _records(text: bytes, needles: Needles | None) -> Iterator[Hit]:
    for line in _candidates(text, needles):
        hit = decode_json(line)
        if hit is not None:
            yield hit


def _stream(path: Path) -> Iterator[Hit]:
    """Every record of a day file, line by line, as ``read_day`` reads it."""
    for raw in day_lines(path):
        hit = decode_json(raw)
        if hit is not None:
            yield hit


def _candidates(text: bytes, needles: Needles | None) -> list[bytes]:
    """The lines of ``text`` holding a needle (every line when there are none)."""
    if needles is None:
        return text.split(b"\n")
    lowered = text.lower() if needles.fold else text  # lower(): ASCII letters only
    wanted: Iterable[bytes] = needles.texts
    if needles.fold and lowered.isascii():  # most blocks: no folding character in them
        wanted = [n for n in needles.texts if n.isascii()]
    begins: set[int] = set()
    for needle in wanted:
        at = lowered.find(needle)
        while at >= 0:
            begins.add(lowered.rfind(b"\n", 0, at) + 1)
            end = lowered.find(b"\n", at)
            if end < 0:
                break
            at = lowered.find(needle, end)
    lines = []
    for begin in sorted(begins):
        end = text.find(b"\n", begin)
        lines.append(text[begin : len(text) if end < 0 else end])
    return lines
