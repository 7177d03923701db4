"""Finding and expiring events (MIC Art. 8.2): the library behind ``mailgate logs search``.

The log is one JSONL file per UTC day, written by :mod:`gateway.events.writer`; the day in
the file name lets a search skip whole files and lets retention delete whole days. Reading
never trusts the file to be clean: a crash can leave a torn last line, and a torn line can
have the next record appended right after it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from gateway.events.index import bare_address as _bare_address
from gateway.events.index import bare_id as _bare_id
from gateway.events.writer import EVENT_FILE_PREFIX, EVENT_FILE_SUFFIX, event_file_name

__all__ = [
    "COMPRESSED_SUFFIX",
    "LEADING_FIELDS",
    "Query",
    "day_files",
    "day_lines",
    "decode_json",
    "decode_line",
    "format_event",
    "open_day",
    "parse_time",
    "purge",
    "read_day",
    "search",
    "search_hits",
    "search_lines",
]

COMPRESSED_SUFFIX = ".gz"
# Every record the writer emits starts with this key (compact separators, ts first).
_RECORD_START = '{"ts":'
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_FORMS = "expected e.g. 2026-11-25, 2026-11-25T10:00:00Z or 2026-11-25T17:00:00+07:00"
# Fields shown first by format_event, in the contract's order; the rest follow as written.
LEADING_FIELDS = (
    "session",
    "client",
    "user",
    "message_id",
    "sender",
    "recipients",
    "size",
    "code",
    "reason",
)


@dataclass(frozen=True, slots=True)
class Query:
    """What to look for; ``None`` means "any". ``since``/``until`` are both inclusive.

    Addresses match case-insensitively; ``"@example.gov.vn"`` matches a whole domain and
    ``""`` or ``"<>"`` the null sender. Naive datetimes are taken as UTC.
    """

    since: datetime | None = None
    until: datetime | None = None
    sender: str | None = None
    recipient: str | None = None
    message_id: str | None = None
    event: str | None = None
    session: str | None = None
    client: str | None = None
    user: str | None = None
    reason: str | None = None  # a case-insensitive substring of the event's reason


def parse_time(text: str, *, end_of_day: bool = False) -> datetime:
    """An aware UTC datetime from RFC 3339 (``2026-11-25T10:00:00Z``, ``+07:00``) or a date.

    A bare date means the start of that UTC day, or with ``end_of_day`` its last
    microsecond, so ``--until 2026-11-25`` can include the whole day. A time without a
    zone is refused: in UTC+7 guessing wrong shifts every result by seven hours.
    """
    value = text.strip()
    if not value:
        raise ValueError(f"empty time: {_TIME_FORMS}")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        return datetime.combine(day, time.max if end_of_day else time.min, tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise ValueError(f"{text!r} is not a date or RFC 3339 time: {_TIME_FORMS}") from None
    if moment.tzinfo is None:
        raise ValueError(
            f"{text!r} has no time zone: add 'Z' for UTC or an offset such as '+07:00'"
        )
    return moment.astimezone(UTC)


def search(
    log_dir: Path, query: Query, progress: Callable[[int, int, date], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Matching events, oldest first (see :func:`search_hits`)."""
    return (record for record, _ in search_hits(log_dir, query, progress))


def search_lines(
    log_dir: Path, query: Query, progress: Callable[[int, int, date], None] | None = None
) -> Iterator[str]:
    """The JSON text of each matching event as stored in its day file, oldest first."""
    return (text for _, text in search_hits(log_dir, query, progress))


def search_hits(
    log_dir: Path, query: Query, progress: Callable[[int, int, date], None] | None = None
) -> Iterator[tuple[dict[str, Any], str]]:
    """Matching events, oldest first, reading only the day files that can hold a match.

    A query naming a message id, session, address, user or client goes through the
    index (:mod:`gateway.events.lookup`): only the blocks holding the key are read,
    and days the index does not cover (today, a changed day) are scanned. Within a day
    the file is in append order, which two threads (or a clock step) can swap; the
    matches of each day are therefore sorted by ``ts`` before they are yielded.
    ``progress(done, total, day)`` is called before each day is read.
    """
    from gateway.events.lookup import query_plan, search_days

    since = _utc(query.since) if query.since is not None else None
    until = _utc(query.until) if query.until is not None else None
    if since is not None and until is not None and since > until:
        return
    keys, needles = query_plan(query)

    def wanted(record: dict[str, Any]) -> bool:
        moment = _timestamp(record)
        if moment is None:
            return False
        if (since is not None and moment < since) or (until is not None and moment > until):
            return False
        return _matches(record, query)

    first = since.date() if since is not None else None
    last = until.date() if until is not None else None
    yield from search_days(log_dir, first, last, keys, needles, wanted, progress)


def sort_key(record: dict[str, Any]) -> datetime:
    """Records of a day in time order; a record without a readable time goes first."""
    return _timestamp(record) or _EPOCH


def format_event(record: dict[str, Any]) -> str:
    """One line for a person: ``ts event key=value ...``, contract fields first.

    Values with spaces, quotes or control characters are JSON-quoted so that a hostile
    header can neither split the line nor forge a field.
    """
    pieces = [_show(record.get("ts", "-")), _show(record.get("event", "-"))]
    keys = [k for k in LEADING_FIELDS if k in record]
    keys += [k for k in record if k not in keys and k not in ("ts", "event")]
    pieces += [f"{_show(key)}={_show(record[key])}" for key in keys]
    return " ".join(pieces)


def purge(log_dir: Path, now: datetime, retention_days: int) -> list[Path]:
    """Delete the day files whose every event is older than ``retention_days`` before ``now``.

    A day is kept while any moment of it is inside the window, so the law's minimum is
    always met; the deleted paths are returned for the caller to record.
    """
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, got {retention_days}")
    cutoff = _utc(now) - timedelta(days=retention_days)
    deleted: list[Path] = []
    for day, path in day_files(log_dir):
        day_end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC)
        if day_end <= cutoff:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted


def day_files(log_dir: Path) -> list[tuple[date, Path]]:
    """The event files under ``log_dir`` with their UTC day, oldest first; others ignored.

    A day is either ``events-DAY.jsonl`` or, once maintenance compressed it,
    ``events-DAY.jsonl.gz``. Should both exist (a crash between writing the ``.gz`` and
    removing the plain file), the plain file is the one listed: it is complete by
    construction, while the ``.gz`` is only trusted once the plain file is gone.
    """
    found: dict[date, Path] = {}
    if not log_dir.is_dir():
        return []
    for path in log_dir.iterdir():
        name = path.name
        plain = name[: -len(COMPRESSED_SUFFIX)] if name.endswith(COMPRESSED_SUFFIX) else name
        if not (plain.startswith(EVENT_FILE_PREFIX) and plain.endswith(EVENT_FILE_SUFFIX)):
            continue
        stem = plain[len(EVENT_FILE_PREFIX) : len(plain) - len(EVENT_FILE_SUFFIX)]
        try:
            day = date.fromisoformat(stem)
        except ValueError:
            continue
        if event_file_name(day.isoformat()) != plain or not path.is_file():
            continue
        if day not in found or plain == name:
            found[day] = path
    return sorted(found.items())


def open_day(path: Path) -> BinaryIO:
    """A day file opened for reading bytes, decompressing a ``.gz`` on the fly."""
    if path.name.endswith(COMPRESSED_SUFFIX):
        return gzip.open(path, "rb")
    return path.open("rb")


def read_day(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one day file, plain or compressed; unreadable lines are skipped."""
    for raw in day_lines(path):
        record = decode_line(raw)
        if record is not None:
            yield record


def day_lines(path: Path) -> Iterator[bytes]:
    """The raw lines of one day file, plain or compressed, one at a time (a whole day
    need not fit in memory). A compressed file cut short (a crash while it was written)
    yields what it holds; a file purged between listing and reading, nothing."""
    try:
        handle = open_day(path)
    except FileNotFoundError:
        return
    with handle:
        try:
            yield from handle
        except (OSError, EOFError):  # a truncated or corrupt .gz: what was read stands
            return


def decode_line(raw: bytes) -> dict[str, Any] | None:
    """One record from one line of a day file, or None for a blank or unreadable line."""
    found = decode_json(raw)
    return found[0] if found is not None else None


def decode_json(raw: bytes) -> tuple[dict[str, Any], str] | None:
    """One record and the JSON text it was read from (the line, or what follows a torn
    record on it), so ``--json`` can print what is stored without encoding it again."""
    line = raw.decode("utf-8", "replace").strip()
    return _decode(line) if line else None


def _decode(line: str) -> tuple[dict[str, Any], str] | None:
    """One record, or the record written after a torn one on the same line, or None."""
    for candidate in (line, line[line.rfind(_RECORD_START) :]):
        try:
            record = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record, candidate
    return None


def _timestamp(record: dict[str, Any]) -> datetime | None:
    value = record.get("ts")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return _utc(moment)


def _matches(record: dict[str, Any], query: Query) -> bool:
    if query.event is not None and record.get("event") != query.event:
        return False
    if query.message_id is not None:
        wanted = _bare_id(query.message_id)
        found = record.get("message_id")
        if not isinstance(found, str) or _bare_id(found) != wanted:
            return False
    if query.sender is not None:
        sender = record.get("sender")
        if not isinstance(sender, str) or not _address_matches(sender, query.sender):
            return False
    if query.recipient is not None:
        addresses = list(_strings(record.get("recipients"))) + list(
            _strings(record.get("recipient"))
        )
        if not any(_address_matches(a, query.recipient) for a in addresses):
            return False
    if query.session is not None and query.session.strip() not in _strings(record.get("session")):
        return False
    if query.client is not None and query.client.strip() not in [
        c.strip() for c in _strings(record.get("client"))
    ]:
        return False
    if query.user is not None and not any(
        _address_matches(u, query.user) for u in _strings(record.get("user"))
    ):
        return False
    if query.reason is not None:
        reason = record.get("reason")
        if not isinstance(reason, str) or query.reason.casefold() not in reason.casefold():
            return False
    return True


def _address_matches(address: str, wanted: str) -> bool:
    """Whole address, or the domain when ``wanted`` starts with "@"; case-insensitive."""
    have = _bare_address(address)
    want = wanted.strip()
    if want.startswith("@"):
        domain = want[1:].casefold()
        return bool(domain) and have.rpartition("@")[2] == domain and "@" in have
    return have == _bare_address(want)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value if _plain(value) else json.dumps(value, ensure_ascii=False)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, str) and _plain(v) and "," not in v for v in value)
    ):
        return ",".join(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _plain(text: str) -> bool:
    """Safe to print unquoted: non-empty, printable, no space, quote or '='."""
    return bool(text) and text.isprintable() and not any(c.isspace() or c in '"=' for c in text)


def _utc(moment: datetime) -> datetime:
    """Naive means UTC: the log and the contract speak UTC only."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
