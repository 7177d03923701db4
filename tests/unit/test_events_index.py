"""The log index: same answers as a brute-force scan, whatever state the index is in."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from bench.loggen import generate
from gateway.events import blockgz, index, lookup
from gateway.events.index import DayIndex, index_path, update
from gateway.events.search import Query, _matches, _timestamp, day_files, read_day, search

LAST = date(2026, 11, 30)


def brute_many(log_dir: Path, queries: list[Query]) -> list[list[dict[str, Any]]]:
    """Every record of every day, checked one by one: what the index must reproduce."""
    days = [
        sorted((r for r in read_day(path) if _timestamp(r) is not None), key=_timestamp)  # type: ignore[arg-type]
        for _, path in day_files(log_dir)
    ]
    return [[r for day in days for r in day if _matches(r, q)] for q in queries]


def brute(log_dir: Path, query: Query) -> list[dict[str, Any]]:
    return brute_many(log_dir, [query])[0]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five generated days (four in gzip members, today plain), 6,000 events."""
    folder = tmp_path_factory.mktemp("history")
    generate(folder, days=5, events=6000, mailboxes=60, seed=3, workers=1, last_day=LAST)
    return folder


@pytest.fixture
def logs(history: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "log"
    folder.mkdir()
    for _, path in day_files(history):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def sample_queries(log_dir: Path) -> list[Query]:
    """A few values of every key kind, taken from the data, plus one absent value each."""
    records = [r for _, p in day_files(log_dir) for r in read_day(p)]
    pick = records[:: max(1, len(records) // 5)]
    queries = []
    for record in pick:
        if "message_id" in record:
            queries.append(Query(message_id=record["message_id"].strip("<>")))
        if "sender" in record:
            queries.append(Query(sender=record["sender"].upper()))
        for recipient in record.get("recipients", [])[:1]:
            queries.append(Query(recipient=recipient))
        for field in ("session", "client", "user"):
            if field in record:
                queries.append(Query(**{field: record[field]}))
    queries += [Query(sender="nobody@nowhere.vn"), Query(session="ffffffffffff")]
    queries += [Query(client="10.255.255.255"), Query(user="x@y.vn"), Query(message_id="<no@x>")]
    return queries


def test_every_key_kind_equals_brute_force_before_and_after_indexing(logs: Path) -> None:
    queries = sample_queries(logs)
    assert {f for q in queries for f in ("message_id", "sender", "recipient", "session",
            "client", "user") if getattr(q, f)} == {"message_id", "sender", "recipient",
            "session", "client", "user"}  # fmt: skip
    expected = brute_many(logs, queries)
    assert sum(map(len, expected)) > 50
    assert [list(search(logs, q)) for q in queries] == expected  # no index: scans
    report = update(logs, workers=1)
    assert len(report.built) == 5
    assert [list(search(logs, q)) for q in queries] == expected  # through the index


def test_scans_for_reason_event_and_domain_equal_brute_force(logs: Path) -> None:
    update(logs, workers=1)
    for query in (
        Query(reason="TỐI MẬT"),
        Query(reason="user UNKNOWN"),
        Query(event="bounced"),
        Query(sender="@mof.gov.vn", event="message_rejected"),
        Query(recipient="@GMAIL.com"),
    ):
        assert list(search(logs, query)) == brute(logs, query), query


def test_indexed_search_reads_blocks_not_days(logs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    update(logs, workers=1)
    record = next(r for r in read_day(day_files(logs)[1][1]) if "sender" in r)

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("scanned a day the index covers")

    monkeypatch.setattr(lookup, "_scan", no_scan)
    assert list(search(logs, Query(sender=record["sender"])))


def test_the_index_is_smaller_than_half_the_compressed_days(logs: Path) -> None:
    update(logs, workers=1)
    for _, path in day_files(logs)[:-1]:
        assert index_path(logs, path).stat().st_size < path.stat().st_size / 2


def test_todays_events_appended_after_indexing_are_found(logs: Path) -> None:
    update(logs, workers=1)
    today = day_files(logs)[-1][1]
    line = {"ts": "2026-11-30T23:59:00.000000Z", "event": "delivered", "sender": "new@x.vn",
            "chain": "f00d"}  # fmt: skip
    with today.open("ab") as handle:
        handle.write(json.dumps(line).encode() + b"\n")
    found = list(search(logs, Query(sender="new@x.vn")))
    assert found == [line]
    coverage = DayIndex.open(index_path(logs, today)).coverage(today)  # type: ignore[union-attr]
    assert coverage is not None and not coverage.complete  # the prefix stands, the tail scanned
    assert update(logs, workers=1).built == [index_path(logs, today).name]


def test_a_day_changed_since_indexing_is_scanned(logs: Path) -> None:
    update(logs, workers=1)
    path = day_files(logs)[0][1]
    records = list(read_day(path))
    victim = next(r for r in records if r.get("sender"))
    old_sender = victim["sender"]
    for record in records:
        if record.get("sender") == old_sender:
            record["sender"] = "changed@x.vn"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(text))  # one stream, other size: the old index is stale
    assert list(search(logs, Query(sender="changed@x.vn"))) == brute(
        logs, Query(sender="changed@x.vn")
    )
    assert list(search(logs, Query(sender=old_sender))) == brute(logs, Query(sender=old_sender))
    assert update(logs, workers=1).built == [index_path(logs, path).name]
    assert list(search(logs, Query(sender="changed@x.vn"))) == brute(
        logs, Query(sender="changed@x.vn")
    )


def test_damaged_indexes_are_ignored_then_rebuilt(logs: Path) -> None:
    """Cut short, a flipped header byte, empty, garbage: one kind of damage per day."""
    update(logs, workers=1)
    queries = sample_queries(logs)
    expected = brute_many(logs, queries)
    damages = [
        lambda data: data[: len(data) // 2],
        lambda data: data[:20] + bytes([data[20] ^ 0xFF]) + data[21:],
        lambda data: b"",
        lambda data: os.urandom(len(data)),
    ]
    for damage, (_, path) in zip(damages, day_files(logs), strict=False):
        target = index_path(logs, path)
        target.write_bytes(damage(target.read_bytes()))
    assert [list(search(logs, q)) for q in queries] == expected
    assert len(update(logs, workers=1).built) == len(damages)


def test_a_damaged_body_is_caught_by_update(logs: Path) -> None:
    update(logs, workers=1)
    target = index_path(logs, day_files(logs)[0][1])
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))
    assert update(logs, workers=1).built == [target.name]


def test_update_is_incremental_and_drops_indexes_of_purged_days(logs: Path) -> None:
    assert len(update(logs, workers=2).built) == 5
    again = update(logs, workers=1)
    assert (again.built, again.kept, again.removed) == ([], 5, [])
    oldest = day_files(logs)[0][1]
    oldest.unlink()
    assert update(logs, workers=1).removed == [index_path(logs, oldest).name]


def test_kill_9_mid_update_never_gives_wrong_answers(logs: Path) -> None:
    """The index is written file by file (temp, fsync, rename): kill it anywhere."""
    queries = sample_queries(logs)
    expected = brute_many(logs, queries)
    code = (
        "import sys; from pathlib import Path; from gateway.events.index import update\n"
        "while True: update(Path(sys.argv[1]), workers=1); "
        "[p.unlink() for p in (Path(sys.argv[1]) / 'index').glob('*.idx')]\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(logs)], cwd=Path.cwd())
    try:
        deadline = time.monotonic() + 30
        while not list((logs / "index").glob("*.idx")):  # wait until it is writing
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert [list(search(logs, q)) for q in queries] == expected
    update(logs, workers=1)
    assert not list((logs / "index").glob(".*.tmp"))
    assert [list(search(logs, q)) for q in queries] == expected


def test_a_single_stream_gzip_day_is_one_block(tmp_path: Path) -> None:
    lines = b"".join(
        b'{"ts":"2026-05-26T01:00:%02d.000000Z","event":"delivered","sender":"a%d@x.vn"}\n'
        % (i, i % 3)
        for i in range(60)
    )
    day = tmp_path / "events-2026-05-26.jsonl.gz"
    day.write_bytes(gzip.compress(lines))
    update(tmp_path, workers=1)
    assert len(DayIndex.open(index_path(tmp_path, day)).offsets) == 2  # type: ignore[union-attr]
    assert len(list(search(tmp_path, Query(sender="a1@x.vn")))) == 20


def test_escaped_and_non_ascii_spellings_are_found(tmp_path: Path) -> None:
    """A scan skips lines without the needle; a JSON escape or a case-folding sign must not
    hide a match (imported files may be written with ensure_ascii)."""
    day = tmp_path / "events-2026-11-30.jsonl"
    day.write_text(
        '{"ts":"2026-11-30T01:00:00Z","event":"x","sender":"\\u0061n@x.vn"}\n'
        '{"ts":"2026-11-30T01:00:01Z","event":"x","sender":"\u212an@x.vn"}\n'
        '{"ts":"2026-11-30T01:00:02Z","event":"x","sender":"bo@x.vn"}\n',
        encoding="utf-8",
    )
    assert len(list(search(tmp_path, Query(sender="an@x.vn")))) == 1
    assert len(list(search(tmp_path, Query(sender="kn@x.vn")))) == 1
    assert len(list(search(tmp_path, Query(sender="@x.vn")))) == 3


def test_block_gzip_is_plain_gzip_cut_at_line_ends() -> None:
    data = b"".join(b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * (i % 97)) for i in range(5000))
    packed = blockgz.compress_bytes(data, block=4096)
    assert gzip.decompress(packed) == data
    parts = list(blockgz.members(packed))
    assert len(parts) > 10 and all(text.endswith(b"\n") for _, _, text in parts)
    assert b"".join(text for _, _, text in parts) == data
    assert blockgz.inflate(packed[: parts[3][0] + 5]) == b"".join(t for _, _, t in parts[:3])


def test_record_keys_ignore_unknown_fields() -> None:
    keys = index.record_keys(
        {"ts": "t", "event": "delivered", "chain": "abc", "sender": "<A@X.vn>",
         "recipients": ["b@x.vn", 7], "message_id": "<m@x>", "queue_id": "Q",
         "dsn_queue_id": "D", "client": " 1.2.3.4", "user": "U@x.vn", "session": "s"}
    )  # fmt: skip
    assert keys == {"s\0a@x.vn", "r\0b@x.vn", "m\0m@x", "q\0Q", "q\0D", "c\x001.2.3.4",
                    "u\0u@x.vn", "S\0s"}  # fmt: skip


def test_the_fold_table_holds_every_character_that_folds_to_ascii() -> None:
    folding = [chr(c) for c in range(128, 0x110000) if chr(c).casefold().isascii()]
    for char in folding:
        raw = char.encode("utf-8", "surrogatepass")
        prefixes = [p for p in lookup._FOLDS_TO_ASCII if raw.startswith(p)]
        assert len(prefixes) == 1, char
        assert set(char.casefold()) <= set(lookup._FOLDS_TO_ASCII[prefixes[0]]), char


def test_a_day_replaced_by_one_of_same_size_and_mtime_is_scanned(logs: Path) -> None:
    """Only the inode tells them apart: e.g. a restore from backup, or an edit in place
    by someone covering tracks who puts the mtime back."""
    update(logs, workers=1)
    path = day_files(logs)[-1][1]  # plain
    data = path.read_bytes()
    record = next(r for r in read_day(path) if r.get("sender", "").endswith("@mof.gov.vn"))
    old = record["sender"].encode()
    new = b"z" * (len(old) - len(b"@mof.gov.vn")) + b"@mof.gov.vn"
    status = path.stat()
    replacement = path.with_name("replacement")
    replacement.write_bytes(data.replace(old, new))
    os.utime(replacement, ns=(status.st_atime_ns, status.st_mtime_ns))
    os.replace(replacement, path)
    assert path.stat().st_size == status.st_size and path.stat().st_mtime_ns == status.st_mtime_ns
    query = Query(sender=new.decode())
    assert list(search(logs, query)) == brute(logs, query) != []


def test_ids_match_exactly_addresses_in_any_case(tmp_path: Path) -> None:
    day = tmp_path / "events-2026-11-30.jsonl"
    day.write_text(
        '{"ts":"2026-11-30T01:00:00Z","event":"x","message_id":"<AbC@x>","sender":"A@X.vn"}\n'
        '{"ts":"2026-11-30T01:00:01Z","event":"x","message_id":"<\\u0041bC@x>","session":"S1"}\n',
        encoding="utf-8",
    )
    for indexed in (False, True):
        if indexed:
            update(tmp_path, workers=1)
        assert len(list(search(tmp_path, Query(message_id="AbC@x")))) == 2
        assert list(search(tmp_path, Query(message_id="abc@x"))) == []
        assert list(search(tmp_path, Query(session="s1"))) == []
        assert len(list(search(tmp_path, Query(sender="a@x.VN")))) == 1


def test_a_header_edited_without_its_checksum_is_refused(logs: Path) -> None:
    """A header that still has the right length but says less was indexed would make the
    search read the last block twice (through the index, then as the unindexed tail)."""
    update(logs, workers=1)
    today = day_files(logs)[-1][1]
    target = index_path(logs, today)
    index = DayIndex.open(target)
    assert index is not None
    earlier = index.offsets[len(index.offsets) - 2]  # the last block's first line
    index.close()
    data = bytearray(target.read_bytes())
    data[40:48] = earlier.to_bytes(8, "little")  # indexed_len, the header's CRC left as is
    target.write_bytes(bytes(data))
    queries = [Query(event="delivered", sender=r["sender"]) for r in read_day(today)
               if r.get("event") == "delivered"][-3:]  # fmt: skip
    assert [list(search(logs, q)) for q in queries] == brute_many(logs, queries)
