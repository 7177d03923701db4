"""The hash chain (writer) and its verification: each kind of tampering is named by day
file and line; crashes, imported files and quiet days are not called tampering."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from gateway.events.chain import GENESIS, iter_links, link_hash
from gateway.events.search import Query, search
from gateway.events.verify import verify
from gateway.events.writer import EventLog, event_file_name

DAY1 = datetime(2026, 11, 24, 10, tzinfo=UTC)
DAY2 = datetime(2026, 11, 25, 10, tzinfo=UTC)
DAY3 = datetime(2026, 11, 26, 10, tzinfo=UTC)


def write_days(log_dir: Path, per_day: int = 5, days: tuple[datetime, ...] = (DAY1, DAY2, DAY3)):
    now = [days[0]]
    log = EventLog(log_dir, clock=lambda: now[0], sync_interval=3600)
    for moment in days:
        now[0] = moment
        for number in range(per_day):
            log.emit("delivered", message_id=f"<{moment.day}.{number}@x>", code=250)
    log.close()


def day_path(log_dir: Path, moment: datetime) -> Path:
    return log_dir / event_file_name(moment.date().isoformat())


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def problems(log_dir: Path) -> list[str]:
    return [str(p) for p in verify(log_dir).problems]


def test_every_record_chains_to_the_one_before_and_across_days(tmp_path: Path) -> None:
    write_days(tmp_path)
    report = verify(tmp_path)
    assert report.intact, report.problems
    assert [d.events for d in report.days] == [5, 5, 5]
    day1 = [x for x in iter_links(day_path(tmp_path, DAY1))]
    assert day1[0].seq == 1 and day1[0].prev_day is None
    assert day1[0].chain == link_hash(GENESIS, day1[0].body)
    first2 = iter_links(day_path(tmp_path, DAY2))[0]
    assert (first2.prev_day, first2.prev_seq) == ("2026-11-24", 5)
    assert first2.chain == link_hash(day1[-1].chain, first2.body)
    assert report.days[1].final_hash == iter_links(day_path(tmp_path, DAY2))[-1].chain


def test_an_edited_line_is_named(tmp_path: Path) -> None:
    write_days(tmp_path)
    path = day_path(tmp_path, DAY2)
    lines = lines_of(path)
    lines[2] = lines[2].replace(b'"code":250', b'"code":550')
    path.write_bytes(b"".join(lines))
    assert problems(tmp_path) == [
        "events-2026-11-25.jsonl line 3: edited: event #3 does not match its hash (this"
        " line, or the one before it in the chain, was changed)"
    ]


def test_a_deleted_line_is_named(tmp_path: Path) -> None:
    write_days(tmp_path)
    path = day_path(tmp_path, DAY2)
    lines = lines_of(path)
    del lines[1]
    path.write_bytes(b"".join(lines))
    assert problems(tmp_path) == ["events-2026-11-25.jsonl before line 2: event(s) #2 deleted"]


def test_the_deleted_last_line_of_a_finished_day_is_seen_from_the_next_day(
    tmp_path: Path,
) -> None:
    write_days(tmp_path)
    path = day_path(tmp_path, DAY1)
    path.write_bytes(b"".join(lines_of(path)[:-1]))
    assert problems(tmp_path) == [
        "events-2026-11-24.jsonl: events #5..#5 deleted from the end of the day"
        " (2026-11-25 continues from #5)"
    ]


def test_two_swapped_lines_are_named(tmp_path: Path) -> None:
    write_days(tmp_path)
    path = day_path(tmp_path, DAY2)
    lines = lines_of(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    assert problems(tmp_path) == [
        "events-2026-11-25.jsonl lines 2-3: events out of order (#3 before #2): swapped or moved"
    ]


def test_an_inserted_line_is_named(tmp_path: Path) -> None:
    write_days(tmp_path)
    path = day_path(tmp_path, DAY2)
    lines = lines_of(path)
    forged = {"ts": "2026-11-25T10:00:00.5Z", "event": "delivered", "message_id": "<f@x>"}
    lines.insert(3, json.dumps(forged).encode() + b"\n")
    copied = lines[1].replace(b"<25.1@x>", b"<forged@x>")  # a chain field copied from #2
    lines.insert(2, copied)
    path.write_bytes(b"".join(lines))
    assert problems(tmp_path) == [
        "events-2026-11-25.jsonl line 3: inserted (a second #2)",
        "events-2026-11-25.jsonl line 5: inserted: a record without a hash chain",
    ]


def test_a_deleted_day_is_named(tmp_path: Path) -> None:
    write_days(tmp_path)
    day_path(tmp_path, DAY2).unlink()
    assert problems(tmp_path) == [
        "events-2026-11-25.jsonl: day missing: 2026-11-26's chain continues from it"
    ]


def test_a_quiet_day_is_not_a_missing_day(tmp_path: Path) -> None:
    write_days(tmp_path, days=(DAY1, DAY3))
    report = verify(tmp_path)
    assert report.intact, report.problems
    assert [str(n) for n in report.notes] == [
        "events-2026-11-25.jsonl: no events that day (the chain skips it)"
    ]


def test_compressed_days_verify_and_a_cut_short_one_is_named(tmp_path: Path) -> None:
    write_days(tmp_path)
    for moment in (DAY1, DAY2):
        plain = day_path(tmp_path, moment)
        Path(f"{plain}.gz").write_bytes(gzip.compress(plain.read_bytes()))
        plain.unlink()
    assert verify(tmp_path).intact
    gz = Path(f"{day_path(tmp_path, DAY2)}.gz")
    gz.write_bytes(gz.read_bytes()[:-12])
    assert any("compressed file cut short" in p for p in problems(tmp_path))


def test_a_torn_line_is_noted_and_the_next_writer_continues_the_chain(tmp_path: Path) -> None:
    write_days(tmp_path, days=(DAY1,))
    path = day_path(tmp_path, DAY1)
    with path.open("ab") as handle:
        handle.write(b'{"ts":"2026-11-24T10:00:01Z","event":"deliv')  # a crash mid-write
    log = EventLog(tmp_path, clock=lambda: DAY1, sync_interval=3600)
    log.emit("gateway_start")
    log.close()
    lines = lines_of(path)
    assert lines[5] == b'{"ts":"2026-11-24T10:00:01Z","event":"deliv\n'
    assert json.loads(lines[6])["seq"] == 6
    report = verify(tmp_path)
    assert report.intact, report.problems
    assert [str(n) for n in report.notes] == [
        "events-2026-11-24.jsonl line 6: torn line (a crash cut this write); the chain goes on"
    ]
    assert [e["event"] for e in search(tmp_path, Query())][-1] == "gateway_start"


@pytest.mark.parametrize("fragment_size", [10, 5_000, 70_000])
def test_a_long_last_record_or_torn_fragment_is_read_past_the_first_4_kib(
    tmp_path: Path, fragment_size: int
) -> None:
    """The tail is read 4 KiB first: a longer last record (a group's many recipients)
    is still found whole, and a torn fragment of any length is still no link."""
    log = EventLog(tmp_path, clock=lambda: DAY1, sync_interval=3600)
    log.emit("delivered", recipients=[f"member{n:05d}@example.gov.vn" for n in range(400)])
    log.close()
    path = day_path(tmp_path, DAY1)
    assert len(path.read_bytes()) > 10_000
    with path.open("ab") as handle:  # a crash mid-write
        handle.write(b'{"ts":"2026-11-24T10:00:01Z","event":"x","pad":"' + b"p" * fragment_size)
    log = EventLog(tmp_path, clock=lambda: DAY1, sync_interval=3600)
    log.emit("gateway_start")
    log.close()
    assert json.loads(lines_of(path)[-1])["seq"] == 2
    report = verify(tmp_path)
    assert report.intact, report.problems


def test_files_with_only_the_contract_fields_are_unchained_not_broken(tmp_path: Path) -> None:
    path = tmp_path / event_file_name("2026-11-24")
    path.write_text('{"ts":"2026-11-24T10:00:00Z","event":"delivered","message_id":"<a@b>"}\n')
    write_days(tmp_path, days=(DAY2,))
    report = verify(tmp_path)
    assert report.intact, report.problems
    assert "unchained" in str(report.notes[0])
    assert [d.unchained for d in report.days] == [1, 0]
    assert len(list(search(tmp_path, Query(message_id="<a@b>")))) == 1


def test_stripping_the_chain_from_a_later_day_is_a_problem(tmp_path: Path) -> None:
    write_days(tmp_path)
    path = day_path(tmp_path, DAY3)
    records = [json.loads(line) for line in lines_of(path)]
    for record in records:
        for key in ("seq", "chain", "prev_day", "prev_seq"):
            record.pop(key, None)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert problems(tmp_path) == [
        "events-2026-11-26.jsonl: unchained although earlier days are chained: its chain"
        " fields were stripped or the file was replaced"
    ]


def test_since_and_until_check_a_range_and_still_link_to_the_day_before(tmp_path: Path) -> None:
    write_days(tmp_path)
    path = day_path(tmp_path, DAY1)
    path.write_bytes(b"".join(lines_of(path)[:-1]))
    report = verify(tmp_path, since=date(2026, 11, 25), until=date(2026, 11, 25))
    assert [d.day for d in report.days] == ["2026-11-25"]
    assert not report.intact  # the link into DAY1's (now missing) last event


def test_a_caller_cannot_set_the_chain_fields(tmp_path: Path) -> None:
    log = EventLog(tmp_path, clock=lambda: DAY1, sync_interval=3600)
    log.emit("delivered", seq=99, chain="f" * 64, prev_day="2000-01-01")
    log.close()
    record = json.loads(day_path(tmp_path, DAY1).read_text())
    assert record["seq"] == 1 and "prev_day" not in record
    assert verify(tmp_path).intact


def test_writers_in_two_processes_keep_one_chain(tmp_path: Path) -> None:
    """The serve and CLI processes append to the same day file at once: the chain must
    follow the file's real line order (flock + re-reading the tail)."""
    script = (
        "import os, sys; from pathlib import Path; from gateway.events.writer import EventLog\n"
        "log = EventLog(Path(sys.argv[1]), sync_interval=3600)\n"
        "sys.stdin.read(1)\n"  # start together: the race is the point
        "for n in range(1000): log.emit('delivered', n=n, who=sys.argv[2])\n"
        "log.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), name], env=env, stdin=subprocess.PIPE
        )
        for name in ("a", "b", "c")
    ]
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(b"g")
        worker.stdin.close()
    assert [w.wait(timeout=60) for w in workers] == [0, 0, 0]
    report = verify(tmp_path)
    assert report.intact, report.problems[:3]
    assert sum(d.events for d in report.days) == 3000


@pytest.mark.parametrize("fields", [{}, {"recipients": ["a@b", "c@d"], "size": 1}])
def test_the_chain_covers_the_bytes_written(tmp_path: Path, fields: dict) -> None:
    log = EventLog(tmp_path, clock=lambda: DAY1, sync_interval=3600)
    log.emit("message_accepted", reason="Tối mật ở đây", **fields)
    log.close()
    raw = day_path(tmp_path, DAY1).read_bytes().rstrip(b"\n")
    body, _, _ = raw.rpartition(b',"chain":')
    assert json.loads(raw)["chain"] == link_hash(GENESIS, body + b"}")
