"""``mailgate logs search``: filters, day-file pruning, torn lines, retention."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gateway.events.search import Query, day_files, format_event, parse_time, purge, search
from gateway.events.writer import EventLog, event_file_name

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


class Clock:
    """A settable clock for EventLog, so events land on chosen days."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def write(log_dir: Path, events: list[tuple[datetime, str, dict[str, Any]]]) -> None:
    clock = Clock(T0)
    log = EventLog(log_dir, clock=clock)
    for moment, event, fields in events:
        clock.moment = moment
        log.emit(event, **fields)
    log.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Three UTC days of traffic (23, 24, 25 Nov 2026)."""
    directory = tmp_path / "log"
    write(
        directory,
        [
            (
                T0,
                "received",
                {
                    "session": "s1",
                    "message_id": "<m1@example.gov.vn>",
                    "sender": "An@Example.gov.vn",
                    "recipients": ["binh@other.gov.vn", "chi@example.gov.vn"],
                    "size": 1200,
                    "code": 250,
                },
            ),
            (
                T0 + timedelta(hours=1),
                "delivered",
                {"message_id": "<m1@example.gov.vn>", "recipients": ["chi@example.gov.vn"]},
            ),
            (
                T0 + timedelta(days=1),
                "rejected",
                {
                    "session": "s2",
                    "sender": "spam@bad.example",
                    "recipients": ["an@example.gov.vn"],
                    "code": 550,
                    "reason": "attachment_cap",
                },
            ),
            (
                T0 + timedelta(days=1, hours=14, minutes=59, seconds=59),
                "received",
                {
                    "message_id": "m2@other.gov.vn",
                    "sender": "",
                    "recipients": ["an@example.gov.vn"],
                    "code": 250,
                },
            ),
            (
                T0 + timedelta(days=2),
                "auth_failed",
                {"session": "s3", "user": "an@example.gov.vn", "client": "203.0.113.9"},
            ),
            (
                T0 + timedelta(days=2, hours=1),
                "received",
                {
                    "message_id": "<m3@example.gov.vn>",
                    "sender": "binh@other.gov.vn",
                    "recipients": ["AN@EXAMPLE.GOV.VN"],
                    "code": 250,
                },
            ),
        ],
    )
    return directory


def events(log_dir: Path, **query: Any) -> list[str]:
    return [f"{r['event']}@{r['ts'][:13]}" for r in search(log_dir, Query(**query))]


def test_writer_made_one_file_per_day(log_dir: Path) -> None:
    assert [day.isoformat() for day, _ in day_files(log_dir)] == [
        "2026-11-23",
        "2026-11-24",
        "2026-11-25",
    ]


def test_no_filter_returns_everything_in_time_order(log_dir: Path) -> None:
    records = list(search(log_dir, Query()))
    assert len(records) == 6
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    assert records[0]["recipients"] == ["binh@other.gov.vn", "chi@example.gov.vn"]


def test_sender_is_case_insensitive(log_dir: Path) -> None:
    assert events(log_dir, sender="an@example.GOV.vn") == ["received@2026-11-23T09"]
    assert events(log_dir, sender="<an@example.gov.vn>") == ["received@2026-11-23T09"]


def test_sender_domain(log_dir: Path) -> None:
    assert events(log_dir, sender="@EXAMPLE.gov.vn") == ["received@2026-11-23T09"]
    assert events(log_dir, sender="@other.gov.vn") == ["received@2026-11-25T10"]
    assert events(log_dir, sender="@gov.vn") == []


def test_null_sender(log_dir: Path) -> None:
    assert events(log_dir, sender="") == ["received@2026-11-24T23"]
    assert events(log_dir, sender="<>") == ["received@2026-11-24T23"]


def test_recipient_in_list(log_dir: Path) -> None:
    assert events(log_dir, recipient="chi@example.gov.vn") == [
        "received@2026-11-23T09",
        "delivered@2026-11-23T10",
    ]
    assert events(log_dir, recipient="An@Example.gov.vn") == [
        "rejected@2026-11-24T09",
        "received@2026-11-24T23",
        "received@2026-11-25T10",
    ]


def test_recipient_domain(log_dir: Path) -> None:
    assert events(log_dir, recipient="@other.gov.vn") == ["received@2026-11-23T09"]


def test_message_id_with_or_without_brackets(log_dir: Path) -> None:
    expected = ["received@2026-11-23T09", "delivered@2026-11-23T10"]
    assert events(log_dir, message_id="m1@example.gov.vn") == expected
    assert events(log_dir, message_id="<m1@example.gov.vn>") == expected
    # stored without brackets, asked with them
    assert events(log_dir, message_id="<m2@other.gov.vn>") == ["received@2026-11-24T23"]


def test_event_is_exact(log_dir: Path) -> None:
    assert events(log_dir, event="rejected") == ["rejected@2026-11-24T09"]
    assert events(log_dir, event="reject") == []


def test_filters_combine(log_dir: Path) -> None:
    assert events(log_dir, event="received", recipient="an@example.gov.vn") == [
        "received@2026-11-24T23",
        "received@2026-11-25T10",
    ]
    assert events(log_dir, event="received", recipient="an@example.gov.vn", sender="") == [
        "received@2026-11-24T23"
    ]


def test_since_and_until_are_inclusive(log_dir: Path) -> None:
    exact = T0 + timedelta(hours=1)
    assert events(log_dir, since=exact, until=exact) == ["delivered@2026-11-23T10"]
    assert events(
        log_dir, since=T0 + timedelta(hours=1, microseconds=1), until=T0 + timedelta(days=1)
    ) == ["rejected@2026-11-24T09"]


def test_since_until_with_offsets_and_naive_utc(log_dir: Path) -> None:
    hanoi = timezone(timedelta(hours=7))
    # 2026-11-25 06:00+07:00 is 2026-11-24 23:00Z
    since = datetime(2026, 11, 25, 6, 0, tzinfo=hanoi)
    assert events(log_dir, since=since, until=since + timedelta(hours=1)) == [
        "received@2026-11-24T23"
    ]
    assert events(log_dir, since=datetime(2026, 11, 25, 9, 30)) == ["received@2026-11-25T10"]


def test_until_end_of_day_covers_the_whole_day(log_dir: Path) -> None:
    day_start = parse_time("2026-11-24")
    day_end = parse_time("2026-11-24", end_of_day=True)
    assert events(log_dir, since=day_start, until=day_start) == []
    assert events(log_dir, since=day_start, until=day_end) == [
        "rejected@2026-11-24T09",
        "received@2026-11-24T23",
    ]


def test_since_after_until_finds_nothing(log_dir: Path) -> None:
    assert events(log_dir, since=T0 + timedelta(days=1), until=T0) == []


def spy_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real_open: Callable[..., Any] = Path.open

    def spying_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spying_open)
    return opened


def test_since_skips_older_day_files(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = spy_opens(monkeypatch)
    assert events(log_dir, since=parse_time("2026-11-24T12:00:00Z")) == [
        "received@2026-11-24T23",
        "auth_failed@2026-11-25T09",
        "received@2026-11-25T10",
    ]
    assert opened == [event_file_name("2026-11-24"), event_file_name("2026-11-25")]


def test_until_skips_newer_day_files(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = spy_opens(monkeypatch)
    assert events(log_dir, until=parse_time("2026-11-23T23:59:59Z")) == [
        "received@2026-11-23T09",
        "delivered@2026-11-23T10",
    ]
    assert opened == [event_file_name("2026-11-23")]


def test_since_until_open_only_the_middle_day(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = spy_opens(monkeypatch)
    query = {"since": parse_time("2026-11-24"), "until": parse_time("2026-11-24", end_of_day=True)}
    assert len(events(log_dir, **query)) == 2
    assert opened == [event_file_name("2026-11-24")]


def test_torn_last_line_is_skipped(log_dir: Path) -> None:
    path = log_dir / event_file_name("2026-11-25")
    with path.open("ab") as handle:
        handle.write(b'{"ts":"2026-11-25T23:00:00.000000Z","event":"recei')
    assert len(list(search(log_dir, Query()))) == 6


def test_record_appended_after_a_torn_line_is_recovered(log_dir: Path) -> None:
    path = log_dir / event_file_name("2026-11-25")
    with path.open("ab") as handle:
        handle.write(b'{"ts":"2026-11-25T23:00:00.000000Z","event":"recei')
    clock = Clock(datetime(2026, 11, 25, 23, 30, tzinfo=UTC))
    log = EventLog(log_dir, clock=clock)
    log.emit("started", reason="after crash: Nguyễn")
    log.close()
    found = list(search(log_dir, Query(event="started")))
    assert [r["reason"] for r in found] == ["after crash: Nguyễn"]


def test_garbage_and_invalid_utf8_lines_are_skipped(log_dir: Path) -> None:
    path = log_dir / event_file_name("2026-11-23")
    with path.open("ab") as handle:
        handle.write(b"\n[1,2]\nnot json\n\xff\xfe\n{}\n" + b'{"ts":"yesterday","event":"x"}\n')
    assert len(list(search(log_dir, Query()))) == 6


def test_out_of_order_lines_in_a_day_are_sorted(tmp_path: Path) -> None:
    write(
        tmp_path,
        [
            (T0 + timedelta(seconds=2), "b", {}),
            (T0 + timedelta(seconds=1), "a", {}),
            (T0 + timedelta(days=1), "c", {}),
        ],
    )
    assert [r["event"] for r in search(tmp_path, Query())] == ["a", "b", "c"]


def test_foreign_files_and_missing_dir_are_ignored(tmp_path: Path) -> None:
    assert list(search(tmp_path / "absent", Query())) == []
    (tmp_path / "events-20261125.jsonl").write_text('{"ts":"2026-11-25T00:00:00Z","event":"x"}\n')
    (tmp_path / "events-latest.jsonl").write_text('{"ts":"2026-11-25T00:00:00Z","event":"x"}\n')
    (tmp_path / "notes.txt").write_text("hello\n")
    assert day_files(tmp_path) == []
    assert list(search(tmp_path, Query())) == []


def test_format_event() -> None:
    record = {
        "ts": "2026-11-25T10:00:00.000000Z",
        "event": "rejected",
        "reason": "attachment_cap: 25 MB > 20 MB",
        "extra": {"k": 1},
        "code": 550,
        "recipients": ["a@x.vn", "b@x.vn"],
        "sender": "an@example.gov.vn",
        "session": "s1",
    }
    assert format_event(record) == (
        "2026-11-25T10:00:00.000000Z rejected session=s1 sender=an@example.gov.vn "
        'recipients=a@x.vn,b@x.vn code=550 reason="attachment_cap: 25 MB > 20 MB" '
        'extra={"k": 1}'
    )


def test_format_event_cannot_be_split_or_forged() -> None:
    record = {
        "ts": "2026-11-25T10:00:00Z",
        "event": "received",
        "sender": "evil@x\ncode=250",
        "recipients": ["a,b@x.vn"],
        "reason": "",
        "user": "Nguyễn",
    }
    line = format_event(record)
    assert "\n" not in line
    assert 'sender="evil@x\\ncode=250"' in line
    assert 'recipients=["a,b@x.vn"]' in line
    assert 'reason=""' in line
    assert "user=Nguyễn" in line


def test_format_event_round_trips_searched_records(log_dir: Path) -> None:
    first = next(search(log_dir, Query()))
    assert format_event(first).startswith(f"{first['ts']} received session=s1 ")
    assert json.loads(json.dumps(first)) == first


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T10:00:00Z", datetime(2026, 11, 25, 10, 0, tzinfo=UTC)),
        ("2026-11-25t10:00:00z", datetime(2026, 11, 25, 10, 0, tzinfo=UTC)),
        ("2026-11-25T17:00:00+07:00", datetime(2026, 11, 25, 10, 0, tzinfo=UTC)),
        ("2026-11-25T10:00:00.123456Z", datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-25 10:00:00-01:30", datetime(2026, 11, 25, 11, 30, tzinfo=UTC)),
        (" 2026-11-25 ", datetime(2026, 11, 25, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_parse_time_end_of_day() -> None:
    assert parse_time("2026-11-25", end_of_day=True) == datetime(
        2026, 11, 25, 23, 59, 59, 999999, tzinfo=UTC
    )
    # an explicit time is never moved
    assert parse_time("2026-11-25T10:00:00Z", end_of_day=True).hour == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty time"),
        ("   ", "empty time"),
        ("yesterday", "not a date or RFC 3339 time"),
        ("2026-13-01", "not a date or RFC 3339 time"),
        ("25/11/2026", "not a date or RFC 3339 time"),
        ("2026-11-25T25:00:00Z", "not a date or RFC 3339 time"),
        ("2026-11-25Tnoon", "not a date or RFC 3339 time"),
        ("2026-11-25T10:00:00", "no time zone"),
    ],
)
def test_parse_time_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_time(text)


def test_purge_at_183_days(tmp_path: Path) -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    cutoff = now - timedelta(days=183)  # 2026-05-26 12:00Z
    days = [cutoff - timedelta(days=2), cutoff - timedelta(days=1), cutoff, now]
    write(tmp_path, [(d, "tick", {}) for d in days])
    (tmp_path / "keep-me.txt").write_text("not an event file\n")
    deleted = purge(tmp_path, now, 183)
    # 05-24 and 05-25 end before the cutoff; 05-26 still has moments inside the window.
    assert [p.name for p in deleted] == [
        event_file_name("2026-05-24"),
        event_file_name("2026-05-25"),
    ]
    assert all(not p.exists() for p in deleted)
    assert [d.isoformat() for d, _ in day_files(tmp_path)] == ["2026-05-26", "2026-11-25"]
    assert (tmp_path / "keep-me.txt").exists()
    assert purge(tmp_path, now, 183) == []


def test_purge_boundary_at_midnight(tmp_path: Path) -> None:
    now = datetime(2026, 11, 25, tzinfo=UTC)  # maintenance --now 2026-11-25
    write(tmp_path, [(datetime(2026, 5, 25, 23, 59, tzinfo=UTC), "tick", {}), (now, "tick", {})])
    write(tmp_path, [(datetime(2026, 5, 26, 0, 0, tzinfo=UTC), "tick", {})])
    deleted = purge(tmp_path, now, 183)
    assert [p.name for p in deleted] == [event_file_name("2026-05-25")]


def test_purge_refuses_nonsense_retention(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention_days"):
        purge(tmp_path, datetime(2026, 11, 25, tzinfo=UTC), 0)


def test_compressed_days_are_listed_and_searched(tmp_path: Path) -> None:
    """Retention compresses old days; search reads them as it reads plain ones."""
    import gzip

    old = b'{"ts":"2026-05-26T01:00:00.000000Z","event":"delivered","sender":"a@x.vn"}\n'
    new = b'{"ts":"2026-11-25T01:00:00.000000Z","event":"delivered","sender":"a@x.vn"}\n'
    (tmp_path / "events-2026-05-26.jsonl.gz").write_bytes(gzip.compress(old))
    (tmp_path / "events-2026-11-25.jsonl").write_bytes(new)
    # A crash between writing the .gz and removing the plain file: the plain one is read.
    (tmp_path / "events-2026-11-25.jsonl.gz").write_bytes(gzip.compress(new)[:10])
    assert [p.name for _, p in day_files(tmp_path)] == [
        "events-2026-05-26.jsonl.gz",
        "events-2026-11-25.jsonl",
    ]
    found = list(search(tmp_path, Query(sender="a@x.vn")))
    assert [r["ts"][:10] for r in found] == ["2026-05-26", "2026-11-25"]


def test_truncated_compressed_day_yields_what_it_holds(tmp_path: Path) -> None:
    import gzip

    lines = b"".join(
        b'{"ts":"2026-05-26T01:00:%02d.000000Z","event":"delivered"}\n' % i for i in range(50)
    )
    packed = gzip.compress(lines)
    (tmp_path / "events-2026-05-26.jsonl.gz").write_bytes(packed[: len(packed) - 8])
    found = list(search(tmp_path, Query()))
    assert 0 < len(found) <= 50
