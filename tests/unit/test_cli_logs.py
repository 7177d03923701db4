"""``mailgate logs verify`` and ``logs export`` through the CLI: exit codes, the final
hash of each day, and the verification travelling with an export."""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import cli
from gateway.events.writer import EventLog, event_file_name
from tests.unit.fakes import minimal_toml

DAYS = (datetime(2026, 11, 24, 9, tzinfo=UTC), datetime(2026, 11, 25, 9, tzinfo=UTC))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(minimal_toml(), encoding="utf-8")
    now = [DAYS[0]]
    log = EventLog(tmp_path / "var/log", clock=lambda: now[0], sync_interval=3600)
    for moment in DAYS:
        now[0] = moment
        log.emit("message_accepted", sender="=cmd|' /C calc'!A0", recipients=["a@x", "b@x"])
        log.emit("delivered", message_id=f"<{moment.day}@x>", code=250)
    log.close()
    return path


def log_file(config: Path, day: str) -> Path:
    return config.parent / "var/log" / event_file_name(day)


def test_verify_prints_each_days_final_hash_and_exits_0(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-c", str(config), "logs", "verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    last = json.loads(log_file(config, "2026-11-25").read_text().splitlines()[-1])
    assert out[1] == (
        f"2026-11-25  events-2026-11-25.jsonl  2 chained 0 unchained  final {last['chain']}"
    )
    assert out[-1] == "verify: 2 day(s), 4 chained event(s): intact"


def test_verify_names_the_edited_line_and_exits_1(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = log_file(config, "2026-11-24")
    path.write_text(path.read_text().replace('"code":250', '"code":251'))
    assert cli.main(["-c", str(config), "logs", "verify", "--since", "2026-11-24"]) == 1
    out = capsys.readouterr().out
    assert "problem: events-2026-11-24.jsonl line 2: edited: event #2" in out
    assert out.splitlines()[-1] == "verify: 2 day(s): 1 problem(s)"


def test_verify_reads_compressed_days(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = log_file(config, "2026-11-24")
    Path(f"{path}.gz").write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    assert cli.main(["-c", str(config), "logs", "verify", "--until", "2026-11-24"]) == 0
    assert "events-2026-11-24.jsonl.gz  2 chained" in capsys.readouterr().out


def test_export_jsonl_copies_the_lines_then_the_hashes_and_the_verdict(
    config: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out.jsonl"
    argv = ["-c", str(config), "logs", "export", "--since", "2026-11-24", "--until", "2026-11-25"]
    assert cli.main([*argv, "-o", str(target)]) == 0
    lines = target.read_text(encoding="utf-8").splitlines()
    written = [
        line
        for day in ("2026-11-24", "2026-11-25")
        for line in log_file(config, day).read_text().splitlines()
    ]
    assert lines[:4] == written  # byte for byte: the recipient can re-check the chain
    trailer = [json.loads(line) for line in lines[4:]]
    assert [(t["event"], t["ts"]) for t in trailer[:2]] == [
        ("day_final_hash", "2026-11-24"),
        ("day_final_hash", "2026-11-25"),
    ]
    assert trailer[1]["final_hash"] == json.loads(written[-1])["chain"]
    assert trailer[2]["event"] == "export_verification" and trailer[2]["intact"] is True


def test_export_csv_has_the_same_records_and_defuses_formulas(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file(config, "2026-11-25").write_text(
        log_file(config, "2026-11-25").read_text().replace("<25@x>", "<26@x>")
    )
    argv = ["-c", str(config), "logs", "export", "--since", "2026-11-25T00:00:00Z"]
    assert cli.main([*argv, "--until", "2026-11-25", "--format", "csv"]) == 1  # tampered
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["event"] for r in rows] == [
        "message_accepted",
        "delivered",
        "day_final_hash",
        "export_verification",
    ]
    assert rows[0]["sender"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["recipients"] == "a@x b@x"
    assert rows[3]["reason"] == "1 problem(s)"
    assert "edited" in json.loads(rows[3]["other"])["problems"][0]


def test_check_config_says_where_the_anchors_and_metrics_go(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.tls import write_self_signed

    write_self_signed(config.parent / "ca.pem", config.parent / "ca.key", "tsa.example")
    text = config.read_text().replace(
        'dir = "var/log"',
        'dir = "var/log"\ntimestamp_authority = "http://127.0.0.1:9/tsa"\n'
        'timestamp_ca_file = "ca.pem"\nsyslog = "udp:127.0.0.1:514"\n'
        '[metrics]\nlisten = "127.0.0.1:9464"',
    )
    config.write_text(text)
    cli.main(["-c", str(config), "check-config", "--skip-bind"])
    out = capsys.readouterr().out
    assert f"log time-stamps: http://127.0.0.1:9/tsa (CA {config.parent / 'ca.pem'})" in out
    assert "log syslog: udp:127.0.0.1:514 (final hashes)" in out
    assert "metrics: http://127.0.0.1:9464/metrics" in out
    config.write_text(text.replace('timestamp_ca_file = "ca.pem"\n', ""))
    assert cli.main(["-c", str(config), "check-config", "--skip-bind"]) == 1
    assert "error: log.timestamp_ca_file: missing;" in capsys.readouterr().out
