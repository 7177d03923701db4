"""maintenance's log retention: compress days before yesterday, delete days past
retention_days, crash-safe; search and verify read what it leaves."""

from __future__ import annotations

import gzip
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.events import retention
from gateway.events.retention import apply_retention, compress_day
from gateway.events.search import Query, day_files, search
from gateway.events.verify import verify
from gateway.events.writer import EventLog, event_file_name

NOW = datetime(2026, 11, 25, 6, tzinfo=UTC)


def write_day(log_dir: Path, moment: datetime, count: int = 3) -> None:
    log = EventLog(log_dir, clock=lambda: moment, sync_interval=3600)
    for number in range(count):
        log.emit("delivered", message_id=f"<{moment.date()}.{number}@x>")
    log.close()


def names(log_dir: Path) -> list[str]:
    return sorted(p.name for p in log_dir.iterdir())


def test_days_before_yesterday_are_compressed_and_still_found(tmp_path: Path) -> None:
    for back in (3, 2, 1, 0):
        write_day(tmp_path, NOW - timedelta(days=back))
    result = apply_retention(tmp_path, NOW, 183)
    assert result.compressed == [event_file_name("2026-11-22"), event_file_name("2026-11-23")]
    assert names(tmp_path) == [
        "events-2026-11-22.jsonl.gz",
        "events-2026-11-23.jsonl.gz",
        "events-2026-11-24.jsonl",
        "events-2026-11-25.jsonl",
    ]
    assert len(list(search(tmp_path, Query(message_id="<2026-11-22.1@x>")))) == 1
    assert verify(tmp_path).intact
    assert apply_retention(tmp_path, NOW, 183).compressed == []  # idempotent


def test_days_past_retention_are_deleted_with_their_side_files(tmp_path: Path) -> None:
    old = NOW - timedelta(days=184)
    kept = NOW - timedelta(days=183)  # its last moment is still inside the window
    write_day(tmp_path, old)
    write_day(tmp_path, kept)
    stem = f"events-{old.date()}"
    (tmp_path / f"{stem}.tsr").write_bytes(b"token")
    (tmp_path / f"{stem}.jsonl.gz.tmp").write_bytes(b"half")
    result = apply_retention(tmp_path, NOW, 183)
    assert sorted(result.deleted) == [f"{stem}.jsonl", f"{stem}.jsonl.gz.tmp", f"{stem}.tsr"]
    assert names(tmp_path) == [f"events-{kept.date()}.jsonl.gz"]


@pytest.mark.parametrize("step", ["rename", "unlink"])
def test_a_crash_before_the_plain_file_is_removed_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    write_day(tmp_path, NOW - timedelta(days=5), count=50)
    plain = tmp_path / event_file_name(str((NOW - timedelta(days=5)).date()))
    original = plain.read_bytes()

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # the power goes at this step

    if step == "rename":
        monkeypatch.setattr(os, "replace", crash)
    else:
        monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(KeyboardInterrupt):
        compress_day(plain)
    monkeypatch.undo()
    assert plain.read_bytes() == original  # both exist: search reads the plain one
    assert day_files(tmp_path) == [((NOW - timedelta(days=5)).date(), plain)]
    apply_retention(tmp_path, NOW, 183)  # the next run finishes the job
    assert names(tmp_path) == [plain.name + ".gz"]
    assert gzip.decompress((tmp_path / (plain.name + ".gz")).read_bytes()) == original


def test_a_gz_that_does_not_match_is_never_kept_in_place_of_the_plain_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_day(tmp_path, NOW - timedelta(days=5))
    plain = tmp_path / event_file_name(str((NOW - timedelta(days=5)).date()))
    monkeypatch.setattr(retention, "_gz_digest", lambda path: b"not the same")
    with pytest.raises(OSError, match="kept the plain file"):
        compress_day(plain)
    assert names(tmp_path) == [plain.name]


def test_the_gz_is_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_day(tmp_path, NOW - timedelta(days=5))
    plain = tmp_path / event_file_name(str((NOW - timedelta(days=5)).date()))
    order: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        order.append("fsync " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: os.PathLike, dst: os.PathLike) -> None:
        order.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    compress_day(plain)
    assert order.index(f"fsync {plain.name}.gz.tmp") < order.index("rename")


def test_a_now_in_the_future_never_compresses_the_days_still_written(tmp_path: Path) -> None:
    """``maintenance --now`` a year ahead: the file the running gateway appends to today
    must stay in place, or its events would go to a removed file."""
    write_day(tmp_path, NOW)
    result = apply_retention(tmp_path, NOW + timedelta(days=300), 3650, clock=NOW)
    assert result.compressed == []
    assert names(tmp_path) == [event_file_name(str(NOW.date()))]


def test_compressed_day_is_block_gzip_and_search_reads_one_member(tmp_path: Path) -> None:
    """maintenance writes the members the index points into: the same bytes as
    blockgz.compress_bytes, each member inflating on its own, whole lines each."""
    from gateway.events import blockgz
    from gateway.events.retention import compress_day

    lines = b"".join(
        b'{"ts":"2026-05-26T01:%02d:%02d.000000Z","event":"delivered","sender":"s%d@x.vn"}\n'
        % (i // 60 % 60, i % 60, i)
        for i in range(3000)
    )
    plain = tmp_path / "events-2026-05-26.jsonl"
    plain.write_bytes(lines)
    packed = compress_day(plain).read_bytes()
    assert packed == blockgz.compress_bytes(lines)
    members = list(blockgz.members(packed))
    assert len(members) > 5
