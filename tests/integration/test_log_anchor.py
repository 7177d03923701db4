"""Each finished day's final hash leaves the box: an RFC 3161 token from a real (local)
``openssl ts`` authority, checked by ``logs verify``, and a syslog line."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import cli
from gateway.events.writer import EventLog, event_file_name
from tests.integration.tsa import LocalTSA
from tests.unit.fakes import minimal_toml

DAYS = (datetime(2026, 11, 23, 9, tzinfo=UTC), datetime(2026, 11, 24, 9, tzinfo=UTC))
NOW = "2026-11-25"


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTSA]:
    authority = LocalTSA(tmp_path_factory.mktemp("tsa")).start()
    yield authority
    authority.stop()


@pytest.fixture
def syslog_port() -> Iterator[socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    yield receiver
    receiver.close()


def make_config(tmp_path: Path, tsa: LocalTSA, syslog: socket.socket) -> Path:
    path = tmp_path / "gateway.toml"
    text = minimal_toml(
        timestamp_authority=tsa.url,
        timestamp_ca_file=str(tsa.ca_file),
        syslog=f"udp:127.0.0.1:{syslog.getsockname()[1]}",
    )
    path.write_text(text, encoding="utf-8")
    (tmp_path / "var").mkdir()
    from gateway.directory.mailboxes import Directory

    Directory.for_data_dir(tmp_path / "var").close()
    now = [DAYS[0]]
    log = EventLog(tmp_path / "var/log", clock=lambda: now[0], sync_interval=3600)
    for moment in DAYS:
        now[0] = moment
        for number in range(3):
            log.emit("delivered", message_id=f"<{moment.day}.{number}@x>", code=250)
    log.close()
    return path


def final_hash(log_dir: Path, day: str) -> str:
    import json

    plain = log_dir / event_file_name(day)
    if plain.exists():
        return json.loads(plain.read_text().splitlines()[-1])["chain"]
    import gzip

    return json.loads(gzip.decompress(Path(f"{plain}.gz").read_bytes()).splitlines()[-1])["chain"]


def test_maintenance_time_stamps_finished_days_and_verify_checks_the_tokens(
    tmp_path: Path,
    tsa: LocalTSA,
    syslog_port: socket.socket,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(tmp_path, tsa, syslog_port)
    log_dir = tmp_path / "var/log"
    assert cli.main(["-c", str(config), "maintenance", "--now", NOW]) == 0
    out = capsys.readouterr().out
    assert "log anchor: 2026-11-23 time-stamped" in out
    assert "log anchor: 2026-11-24 time-stamped" in out
    assert sorted(p.name for p in log_dir.glob("*.tsr")) == [
        "events-2026-11-23.tsr",
        "events-2026-11-24.tsr",
    ]
    received = {syslog_port.recv(4096).decode() for _ in range(2)}
    assert any(
        f"log_day_final_hash day=2026-11-24 seq=3 sha256={final_hash(log_dir, '2026-11-24')}"
        in line
        for line in received
    ), received
    assert cli.main(["-c", str(config), "maintenance", "--now", NOW]) == 0
    assert tsa.requests == 2  # idempotent: one token per day

    assert cli.main(["-c", str(config), "logs", "verify", "--until", "2026-11-24"]) == 0
    out = capsys.readouterr().out
    assert "note: events-2026-11-23.tsr: time-stamped " in out  # from the compressed day

    # Rewriting a whole day, chain recomputed, is what the token is for.
    plain = log_dir / event_file_name("2026-11-24")
    lines = plain.read_bytes().splitlines(keepends=True)
    plain.write_bytes(b"".join(lines[:-1]))  # the last event removed: the chain holds
    assert cli.main(["-c", str(config), "logs", "verify", "--since", "2026-11-24"]) == 1
    out = capsys.readouterr().out
    assert "problem: events-2026-11-24.tsr: does not vouch for the day's final hash (#2)" in out


def test_an_unreachable_authority_fails_the_run_and_is_retried(
    tmp_path: Path, tsa: LocalTSA, syslog_port: socket.socket, capsys: pytest.CaptureFixture
) -> None:
    config = make_config(tmp_path, tsa, syslog_port)
    tsa.fail = True
    try:
        assert cli.main(["-c", str(config), "maintenance", "--now", NOW]) == 1
    finally:
        tsa.fail = False
    assert "log anchor: 2026-11-24 failed: " in capsys.readouterr().out
    assert not list((tmp_path / "var/log").glob("*.tsr"))
    assert cli.main(["-c", str(config), "maintenance", "--now", NOW]) == 0
    assert len(list((tmp_path / "var/log").glob("*.tsr"))) == 2


def test_a_token_from_another_authority_is_refused(
    tmp_path: Path, tsa: LocalTSA, syslog_port: socket.socket, capsys: pytest.CaptureFixture
) -> None:
    config = make_config(tmp_path, tsa, syslog_port)
    assert cli.main(["-c", str(config), "maintenance", "--now", NOW]) == 0
    other = LocalTSA(tmp_path / "other")
    digest = final_hash(tmp_path / "var/log", "2026-11-24")
    from gateway.events.anchor import _openssl

    forged = other.reply(_openssl(["ts", "-query", "-digest", digest, "-sha256", "-cert"], b""))
    (tmp_path / "var/log/events-2026-11-24.tsr").write_bytes(forged)
    capsys.readouterr()
    assert cli.main(["-c", str(config), "logs", "verify"]) == 1
    assert "problem: events-2026-11-24.tsr: does not vouch" in capsys.readouterr().out
