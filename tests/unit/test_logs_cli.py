"""``mailgate logs search|trace`` and ``maintenance`` indexing, through both entry points."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli, entry
from gateway.events.search import day_files
from tests.unit.fakes import minimal_toml

CONFIG = minimal_toml()
LINES = [
    '{"ts":"2026-11-29T01:00:00.000000Z","event":"session_start","session":"s1",'
    '"listener":"submission","client":"10.0.0.7"}',
    '{"ts":"2026-11-29T01:00:01.000000Z","event":"auth_success","session":"s1",'
    '"client":"10.0.0.7","user":"An@example.gov.vn","chain":"c0"}',
    '{"ts":"2026-11-29T01:00:02.000000Z","event":"message_rejected","session":"s1",'
    '"queue_id":"Q1","message_id":"<m1@example.gov.vn>","sender":"an@example.gov.vn",'
    '"recipients":["b@other.vn"],"code":550,"reason":"550 5.7.1 Classified content'
    ' [classification]: TỐI MẬT stamp","client":"10.0.0.7","user":"an@example.gov.vn"}',
    '{"ts":"2026-11-30T02:00:00.000000Z","event":"delivered","queue_id":"Q2",'
    '"message_id":"<m2@x.vn>","sender":"c@x.vn","recipients":["an@example.gov.vn"],"code":250}',
]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    logs = tmp_path / "var" / "log"
    logs.mkdir(parents=True)
    (logs / "events-2026-11-29.jsonl").write_text("\n".join(LINES[:3]) + "\n", encoding="utf-8")
    (logs / "events-2026-11-30.jsonl").write_text(LINES[3] + "\n", encoding="utf-8")
    return path


def run(main, config: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["-c", str(config), *args])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("main", [entry.main, cli.main], ids=["entry", "cli"])
@pytest.mark.parametrize(
    ("option", "value", "wanted"),
    [
        ("--session", "s1", [0, 1, 2]),
        ("--client", "10.0.0.7", [0, 1, 2]),
        ("--user", "AN@example.gov.vn", [1, 2]),
        ("--reason", "tối mật", [2]),
        ("--recipient", "an@example.gov.vn", [3]),
        ("--message-id", "m2@x.vn", [3]),
    ],
)
def test_json_prints_the_stored_lines(
    main, config: Path, capsys: pytest.CaptureFixture[str], option: str, value: str,
    wanted: list[int],
) -> None:  # fmt: skip
    status, out, err = run(main, config, "logs", "search", option, value, "--json",
                           capsys=capsys)  # fmt: skip
    assert (status, err) == (0, "")
    assert out.splitlines() == [LINES[i] for i in wanted]


def test_default_output_is_a_table_with_a_header(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(entry.main, config, "logs", "search", "--session", "s1", capsys=capsys)
    lines = out.splitlines()
    assert status == 0 and len(lines) == 4
    assert lines[0].startswith("TIME (UTC)") and "SENDER → RECIPIENTS" in lines[0]
    assert "an@example.gov.vn → b@other.vn" in lines[3] and "TỐI MẬT" in lines[3]
    assert run(entry.main, config, "logs", "search", "--user", "x@y.vn", capsys=capsys)[1] == ""


def test_progress_bar_only_on_a_terminal(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(entry.main, config, "logs", "search", "--reason", "x", capsys=capsys)[2] == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert entry.main(["-c", str(config), "logs", "search", "--reason", "x"]) == 0
    assert "scanning [" in terminal.getvalue() and "day 2/2" in terminal.getvalue()
    terminal.truncate(0)
    assert entry.main(["-c", str(config), "logs", "search", "--session", "s1"]) == 0
    assert terminal.getvalue() == ""  # indexed keys: no bar


def test_unknown_event_and_bad_time_still_refused(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(entry.main, config, "logs", "search", "--event", "nope", capsys=capsys)
    assert status == 2 and "known events" in err
    status, _, err = run(entry.main, config, "logs", "search", "--since", "later", capsys=capsys)
    assert status == 1 and err.startswith("mailgate: ")


@pytest.mark.parametrize("main", [entry.main, cli.main], ids=["entry", "cli"])
def test_trace(main, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(main, config, "logs", "trace", "<m1@example.gov.vn>", capsys=capsys)
    assert status == 0
    assert [line.split()[6] for line in out.splitlines()[1:-1]] == [
        "session_start", "auth_success", "message_rejected"
    ]  # fmt: skip
    status, _, err = run(main, config, "logs", "trace", "<none@x>", capsys=capsys)
    assert status == 1 and err == "mailgate: no event names message '<none@x>'\n"


def test_maintenance_builds_the_index_then_keeps_it(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-c", str(config), "init"]) == 0
    status, out, _ = run(cli.main, config, "maintenance", "--now", "2026-11-30", capsys=capsys)
    logs = config.parent / "var" / "log"
    days = len(day_files(logs))  # 2, and today's file with maintenance's own event
    assert status == 0 and f"log index: {days} day(s) indexed, 0 up to date, 0 removed" in out
    assert len(list((logs / "index").glob("*.idx"))) == days >= 2
    status, out, _ = run(cli.main, config, "maintenance", "--now", "2026-11-30", capsys=capsys)
    # maintenance's own log_purged event went into today's file: only that day again
    assert "up to date" in out


def test_command_words_route_search_and_trace_only() -> None:
    assert entry.command_words(["-c", "x.toml", "logs", "search", "--json"]) == ("logs", "search")
    assert entry.command_words(["logs", "--config", "x", "trace", "m"]) == ("logs", "trace")
    assert entry.command_words(["logs", "verify"]) == ("logs", "verify")
    assert entry.command_words(["-h", "logs", "search"]) == ()


def test_fast_path_skips_the_directory_and_the_authenticator(config: Path) -> None:
    code = (
        "import sys; from gateway.entry import main\n"
        f"main(['-c', {str(config)!r}, 'logs', 'search', '--session', 's1'])\n"
        "heavy = [m for m in ('gateway.admin', 'gateway.auth', 'gateway.directory.importer')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "HEAVY []"


def test_stored_json_round_trips(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(entry.main, config, "logs", "search", "--json", capsys=capsys)
    assert [json.loads(line) for line in out.splitlines()] == [json.loads(x) for x in LINES]


def test_config_validated_in_full_once_per_content(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.config

    (config.parent / "var" / "log" / "index").mkdir()
    assert run(entry.main, config, "logs", "search", "--session", "s1", capsys=capsys)[0] == 0
    calls: list[Path] = []
    real = gateway.config.load_config

    def counting(path: Path) -> object:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(gateway.config, "load_config", counting)
    assert run(entry.main, config, "logs", "search", "--session", "s1", capsys=capsys)[0] == 0
    assert calls == []  # same bytes: only [log] dir was read
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[smtp]\n", '[smtp]\ntls_cert = "a\\u0000b"\n'), "utf-8")
    status, _, err = run(entry.main, config, "logs", "search", "--session", "s1", capsys=capsys)
    assert status == 1 and "smtp.tls_cert: contains a NUL character" in err
    assert len(calls) == 1


@pytest.mark.parametrize("main", [entry.main, cli.main], ids=["entry", "cli"])
def test_logs_index_updates_only_what_changed(
    main, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(main, config, "logs", "index", capsys=capsys)
    assert (status, out) == (0, "log index: 2 day(s) indexed, 0 up to date, 0 removed\n")
    status, out, _ = run(main, config, "logs", "index", capsys=capsys)
    assert (status, out) == (0, "log index: 0 day(s) indexed, 2 up to date, 0 removed\n")


def test_an_index_that_cannot_be_written_is_said_not_fatal(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.events import index

    def refused(log_dir: Path, workers: int | None = None) -> None:
        raise PermissionError(13, "Permission denied", str(log_dir / "index"))

    monkeypatch.setattr(index, "update", refused)
    assert cli.main(["-c", str(config), "init"]) == 0
    status, out, _ = run(cli.main, config, "maintenance", "--now", "2026-11-30", capsys=capsys)
    assert status == 0 and "log index: not updated (PermissionError: " in out
    status, _, err = run(entry.main, config, "logs", "index", capsys=capsys)
    assert status == 1 and err.startswith("mailgate: cannot update the log index: Permission")
    assert run(entry.main, config, "logs", "search", "--session", "s1", capsys=capsys)[0] == 0


def test_json_after_a_torn_line_prints_only_the_record(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    day = config.parent / "var" / "log" / "events-2026-11-30.jsonl"
    stored = '{"ts":"2026-11-30T03:00:00Z","event":"delivered","session":"s9","x":"Nguyễn"}'
    with day.open("a", encoding="utf-8") as handle:
        handle.write('{"ts":"2026-11-30T02:59:59Z","event":"deliv' + stored + "\n")
    status, out, _ = run(entry.main, config, "logs", "search", "--session", "s9", "--json",
                         capsys=capsys)  # fmt: skip
    assert (status, out) == (0, stored + "\n")
