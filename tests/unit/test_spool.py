"""spool.py: bodies and queue entries survive a round trip and a crash at any instant."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway import spool as spool_module
from gateway.spool import Body, QueueEntry, Spool, new_queue_id

HEADERS = (
    "Received: from client.example.gov.vn\r\n"
    "From: Nguyễn Văn An <an@example.gov.vn>\r\n"
    "Subject: Báo cáo\r\n"
    "Message-ID: <m1@example.gov.vn>\r\n"
    "\r\n"
).encode()


def message(lines: int = 50) -> bytes:
    body = b"".join(
        b"%s line %d %s\r\n" % (b"." if i % 7 == 0 else b"", i, b"x" * (i % 53))
        for i in range(lines)
    )
    return HEADERS + body


def entry(queue_id: str, **overrides: object) -> QueueEntry:
    fields: dict[str, object] = {
        "queue_id": queue_id,
        "sender": "an@example.gov.vn",
        "pending": ["binh@other.gov.vn", "chi@other.gov.vn"],
        "arrival": 1_700_000_000.5,
        "next_attempt": 1_700_000_060.5,
        "attempts": 1,
        "message_id": "<m1@example.gov.vn>",
        "last_error": {"binh@other.gov.vn": "451 4.4.1 later"},
        "failed": [],
    }
    fields.update(overrides)
    return QueueEntry(**fields)  # type: ignore[arg-type]


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def spilled_body(
    spool: Spool, queue_id: str, data: bytes, threshold: int = 256, prefix: bytes = b""
) -> Body:
    """What the SMTP server does with DATA: write blocks, flush when asked, finish."""

    async def fill() -> Body:
        writer = spool.body_writer(queue_id, threshold)
        for start in range(0, len(data), 100):
            writer.write(data[start : start + 100])
            if writer.needs_flush:
                await writer.flush()
        return await writer.finish(HEADERS, prefix)

    return asyncio.run(fill())


# -- round trip ----------------------------------------------------------------------------


def test_enqueue_load_round_trip_in_memory_body(spool: Spool) -> None:
    data = message()
    original = entry(new_queue_id())
    spool.enqueue(original, Body.from_bytes(data))

    entries, problems = spool.load()

    assert problems == []
    assert entries == [original]
    loaded = spool.body(original.queue_id)
    assert loaded.read() == data
    assert loaded.size == len(data)
    assert loaded.headers == HEADERS[:-2]  # same cut as Body.from_bytes
    assert not loaded.in_memory


def test_enqueue_load_round_trip_spilled_body(spool: Spool) -> None:
    data = message(2000)
    queue_id = new_queue_id()
    body = spilled_body(spool, queue_id, data)
    assert not body.in_memory
    assert body.path is not None and body.path.parent == spool.incoming
    assert body.size == len(data)

    spool.enqueue(entry(queue_id), body)
    entries, problems = spool.load()

    assert problems == []
    assert [e.queue_id for e in entries] == [queue_id]
    assert spool.body(queue_id).read() == data
    # the queue has its own copy: the spill file is still the DATA transaction's to drop
    assert body.read() == data


def test_body_writer_below_threshold_stays_in_memory(spool: Spool) -> None:
    data = message(3)
    writer = spool.body_writer("Q1", len(data))
    writer.write(data)
    assert not writer.needs_flush
    body = asyncio.run(writer.finish(HEADERS))
    assert body.in_memory
    assert body.read() == data
    assert list(spool.incoming.iterdir()) == []


def test_body_writer_write_never_touches_the_disk(spool: Spool) -> None:
    """write() runs on the event loop: past the threshold it only asks for a flush,
    which goes to a worker thread."""
    writer = spool.body_writer("QLOOP", 64)
    writer.write(message(20))
    assert writer.needs_flush
    assert list(spool.incoming.iterdir()) == []
    asyncio.run(writer.flush())
    assert (spool.incoming / "QLOOP.tmp").exists()
    writer.abort()


@pytest.mark.parametrize("threshold", [256, 1 << 20])
def test_prefix_goes_on_top_in_memory_and_spilled(spool: Spool, threshold: int) -> None:
    """Received (and a submission's Date/Message-ID) are known only at the end of DATA;
    they must come first whether the rest stayed in memory or spilled to a file."""
    data = message(300)
    prefix = b"Received: from x by y; now\r\nDate: today\r\n"
    body = spilled_body(spool, f"QPRE{threshold}", data, threshold=threshold, prefix=prefix)
    assert body.in_memory == (threshold > len(data))
    assert body.read() == prefix + data
    assert b"".join(body.line_chunks(64)) == prefix + data
    assert body.size == len(prefix) + len(data)
    assert body.headers.startswith(prefix)
    queue_id = new_queue_id()
    spool.enqueue(entry(queue_id), body)
    assert spool.body(queue_id).read() == prefix + data


def test_entry_fields_survive_json(spool: Spool) -> None:
    failed = [
        {"recipient": "x@y.vn", "status": "5.1.1", "diagnostic": "550 5.1.1 nope", "remote_mta": ""}
    ]
    original = entry(new_queue_id(), sender="", message_id=None, failed=failed, attempts=7)
    spool.enqueue(original, Body.from_bytes(message(2)))
    (loaded,), _ = Spool(spool.root).load()
    assert loaded == original
    assert loaded.sender == ""
    assert loaded.message_id is None
    assert loaded.failed == failed
    assert loaded.attempts == 7


def test_save_replaces_state(spool: Spool) -> None:
    original = entry(new_queue_id())
    spool.enqueue(original, Body.from_bytes(message(2)))
    original.pending = ["chi@other.gov.vn"]
    original.attempts = 2
    original.next_attempt = 1_700_000_180.0
    spool.save(original)
    (loaded,), _ = spool.load()
    assert loaded.pending == ["chi@other.gov.vn"]
    assert loaded.attempts == 2
    assert loaded.next_attempt == 1_700_000_180.0


def test_remove_deletes_state_and_body(spool: Spool) -> None:
    keep, drop = entry(new_queue_id()), entry(new_queue_id())
    for item in (keep, drop):
        spool.enqueue(item, Body.from_bytes(message(2)))
    spool.remove(drop.queue_id)
    entries, problems = spool.load()
    assert [e.queue_id for e in entries] == [keep.queue_id]
    assert problems == []
    assert sorted(p.name for p in spool.queue.iterdir()) == [
        f"{keep.queue_id}.eml",
        f"{keep.queue_id}.json",
    ]
    spool.remove(drop.queue_id)  # removing twice is harmless


# -- durability ----------------------------------------------------------------------------


def test_enqueue_fsyncs_then_renames_body_first_state_last(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        calls.append(("replace", f"{Path(src).name}->{Path(dst).name}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    queue_id = new_queue_id()
    spool.enqueue(entry(queue_id), Body.from_bytes(message(5)))
    monkeypatch.undo()

    queue = str(spool.queue.resolve())
    assert calls == [
        ("fsync", f"{queue}/{queue_id}.eml.part"),
        ("replace", f"{queue_id}.eml.part->{queue_id}.eml"),
        ("fsync", f"{queue}/{queue_id}.json.part"),
        ("replace", f"{queue_id}.json.part->{queue_id}.json"),
        ("fsync", queue),
    ]
    assert list(spool.queue.glob("*.part")) == []


def test_body_without_state_is_deleted_by_recover(spool: Spool) -> None:
    """A crash after the .eml rename but before the .json: the client never got a 250."""
    committed = entry(new_queue_id())
    spool.enqueue(committed, Body.from_bytes(message(2)))
    orphan = spool.body_path(new_queue_id())
    orphan.write_bytes(message(2))

    restarted = Spool(spool.root)
    assert restarted.recover() == 1
    entries, problems = restarted.load()

    assert [e.queue_id for e in entries] == [committed.queue_id]
    assert problems == []
    assert not orphan.exists()
    assert spool.body_path(committed.queue_id).exists()


def test_partial_files_are_deleted_by_recover(spool: Spool) -> None:
    queue_id = new_queue_id()
    (spool.queue / f"{queue_id}.eml.part").write_bytes(b"half a mess")
    (spool.queue / f"{queue_id}.json.part").write_bytes(b'{"queue_id": ')
    entries, problems = spool.load()
    assert entries == [] and problems == []
    assert len(list(spool.queue.iterdir())) == 2, "load() never deletes: a writer may be busy"
    assert spool.recover() == 2
    assert list(spool.queue.iterdir()) == []


def test_state_without_body_is_a_problem_left_in_place(spool: Spool) -> None:
    broken = entry(new_queue_id())
    spool.enqueue(broken, Body.from_bytes(message(2)))
    spool.body_path(broken.queue_id).unlink()

    entries, problems = spool.load()

    assert entries == []
    assert len(problems) == 1
    assert problems[0].startswith(f"{broken.queue_id}.json: ")
    assert "body file missing" in problems[0]
    assert (spool.queue / f"{broken.queue_id}.json").exists()


@pytest.mark.parametrize("content", [b"{not json", b'{"queue_id": "X"}', b"\xff\xfe"])
def test_unreadable_state_is_a_problem_and_keeps_its_body(spool: Spool, content: bytes) -> None:
    good = entry(new_queue_id())
    spool.enqueue(good, Body.from_bytes(message(2)))
    bad_id = new_queue_id()
    spool.body_path(bad_id).write_bytes(message(2))
    (spool.queue / f"{bad_id}.json").write_bytes(content)

    entries, problems = spool.load()

    assert [e.queue_id for e in entries] == [good.queue_id]
    assert [p.split(":", 1)[0] for p in problems] == [f"{bad_id}.json"]
    assert spool.body_path(bad_id).exists()  # kept for an operator to inspect


def test_state_file_is_json_with_the_entry_fields(spool: Spool) -> None:
    original = entry(new_queue_id())
    spool.enqueue(original, Body.from_bytes(message(2)))
    raw = json.loads((spool.queue / f"{original.queue_id}.json").read_text("utf-8"))
    assert raw["queue_id"] == original.queue_id
    assert raw["pending"] == original.pending
    assert raw["last_error"] == original.last_error


# -- incoming/ -----------------------------------------------------------------------------


def test_clear_incoming_deletes_stale_spill_files(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool")
    body = spilled_body(first, "QSTALE1", message(500))
    spilled_body(first, "QSTALE2", message(500))
    assert body.path is not None and body.path.exists()
    queued = entry(new_queue_id())
    first.enqueue(queued, Body.from_bytes(message(2)))

    restarted = Spool(tmp_path / "spool")  # the process died mid-DATA
    assert restarted.clear_incoming() == 2
    assert list(restarted.incoming.iterdir()) == []
    assert restarted.clear_incoming() == 0
    entries, _ = restarted.load()
    assert [e.queue_id for e in entries] == [queued.queue_id]  # the queue is untouched


def test_body_writer_abort_removes_its_spill_file(spool: Spool) -> None:
    writer = spool.body_writer("QABORT", 64)
    writer.write(message(20))
    asyncio.run(writer.flush())
    spill = spool.incoming / "QABORT.tmp"
    assert spill.exists()
    writer.abort()
    assert not spill.exists()
    writer.abort()  # twice is harmless


def test_body_writer_abort_before_spilling(spool: Spool) -> None:
    writer = spool.body_writer("QABORT", 1 << 20)
    writer.write(b"small\r\n")
    writer.abort()
    assert list(spool.incoming.iterdir()) == []


def test_body_discard_removes_spill_file(spool: Spool) -> None:
    body = spilled_body(spool, "QDISCARD", message(500))
    assert body.path is not None
    path = body.path
    body.discard()
    assert not path.exists()


# -- Body.line_chunks ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 53, 100, 4096])
def test_line_chunks_of_a_file_end_at_line_ends(spool: Spool, size: int) -> None:
    data = message(300)
    body = spilled_body(spool, f"QCHUNK{size}", data, threshold=10)
    chunks = list(body.line_chunks(size))
    assert b"".join(chunks) == data
    assert all(chunk.endswith(b"\r\n") for chunk in chunks)
    assert all(len(chunk) >= min(size, len(data)) for chunk in chunks[:-1])
    if size < 100:
        assert len(chunks) > 1  # really chunked


def test_line_chunks_split_between_cr_and_lf(tmp_path: Path) -> None:
    path = tmp_path / "body"
    path.write_bytes(b"abc\r\ndef\r\n")
    body = Body.from_file(path, b"")
    assert list(body.line_chunks(4)) == [b"abc\r\n", b"def\r\n"]


def test_line_chunks_last_chunk_may_lack_a_line_end(tmp_path: Path) -> None:
    path = tmp_path / "body"
    path.write_bytes(b"abc\r\ndef")
    assert list(Body.from_file(path, b"").line_chunks(2)) == [b"abc\r\n", b"def"]


def test_line_chunks_of_memory_body() -> None:
    data = message(40)
    assert b"".join(Body.from_bytes(data).line_chunks(5)) == data
    assert all(c.endswith(b"\r\n") for c in Body.from_bytes(data).line_chunks(5))


def test_body_from_bytes_headers() -> None:
    body = Body.from_bytes(HEADERS + b"text\r\n")
    assert body.headers == HEADERS[:-2]  # the header section ends with its last CRLF
    no_body = Body.from_bytes(b"Subject: x\r\n")
    assert no_body.headers == b"Subject: x\r\n"


# -- queue ids -----------------------------------------------------------------------------


def test_new_queue_id_is_unique_over_10000_calls() -> None:
    ids = [new_queue_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(i.isalnum() and i.upper() == i for i in ids)  # safe as a file name


def test_new_queue_id_sorts_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.0]
    monkeypatch.setattr(spool_module.time, "time", lambda: now[0])
    made = []
    for step in range(300):
        now[0] += 0.001 + (step % 5) * 0.01
        made.append(new_queue_id())
    now[0] += 86_400 * 365 * 20
    made.append(new_queue_id())
    assert sorted(made) == made
    assert len({len(i) for i in made}) == 1


def test_new_queue_id_real_clock_is_time_ordered() -> None:
    before = new_queue_id()
    time.sleep(0.002)
    after = new_queue_id()
    assert before < after


def test_new_queue_id_same_millisecond_sorts_in_creation_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spool_module.time, "time", lambda: 1_700_000_000.0)
    made = [new_queue_id() for _ in range(5000)]
    assert sorted(made) == made


def test_spool_creates_private_folders(tmp_path: Path) -> None:
    made = Spool(tmp_path / "spool")
    for folder in (made.incoming, made.queue):
        assert folder.is_dir()
        assert folder.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("threshold", [64, 1 << 20], ids=["spilled", "in-memory"])
def test_header_edits_remove_folded_fields_and_add_on_top(spool: Spool, threshold: int) -> None:
    data = (
        b"Received: from a\r\n\tby b; now\r\n"
        b"Subject: one\r\n folded\r\n"
        b"X-Keep: yes\r\n"
        b"subject: two\r\n"
        b"\r\n"
        b"Subject: not a header, body text\r\n" + b"line\r\n" * 50
    )
    body = spilled_body(spool, f"QEDIT{threshold}", data, threshold=threshold)
    edited = spool.with_header_edits(body, [("X-Group", "staff")], frozenset({"subject"}), "QE")
    expected = (
        b"X-Group: staff\r\nReceived: from a\r\n\tby b; now\r\nX-Keep: yes\r\n\r\n"
        b"Subject: not a header, body text\r\n" + b"line\r\n" * 50
    )
    assert edited.read() == expected
    assert edited.headers.startswith(b"X-Group: staff\r\nReceived:")
    assert b"Subject" not in edited.headers
    assert body.read() == data  # the original is untouched, still the caller's to drop
    edited.discard()
    body.discard()


def test_queue_ids_of_two_processes_differ_even_with_the_same_clock_and_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """smtp.processes: every process's counter starts at 0 and the clock is shared."""
    monkeypatch.setattr(spool_module, "time", SimpleNamespace(time=lambda: 1_800_000_000.0))
    monkeypatch.setattr(spool_module, "secrets", SimpleNamespace(token_hex=lambda n: "00" * n))
    monkeypatch.setattr(spool_module, "_pid_tag", "")
    monkeypatch.setattr(spool_module, "_counter", itertools.count())
    assert len(new_queue_id()) == 21, "one process: the form it always had"
    ids = set()
    for pid in (4242, 4243):
        monkeypatch.setattr(spool_module, "os", SimpleNamespace(getpid=lambda pid=pid: pid))
        monkeypatch.setattr(spool_module, "_counter", itertools.count())
        spool_module.tag_queue_ids_with_pid()
        ids.add(new_queue_id())
    assert len(ids) == 2
