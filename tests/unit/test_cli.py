"""cli.py: check-config stays one line per problem whatever goes wrong while loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import cli


def test_a_surprise_while_loading_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def surprise(path: Path) -> None:
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(cli, "load_config", surprise)
    config = tmp_path / "gateway.toml"
    assert cli.main(["-c", str(config), "check-config"]) == 2
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"config error: {config}: RuntimeError: something nobody foresaw"
    ]
    assert "Traceback" not in out.err


def test_check_config_says_what_a_login_costs_and_which_minimums_it_meets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.integration.harness import free_port

    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
hostname = "mx.example.gov.vn"
domains = ["example.gov.vn"]
data_dir = "var"
[smtp]
inbound_listen = "127.0.0.1:{free_port()}"
submission_listen = "127.0.0.1:{free_port()}"
require_tls_for_auth = false
[delivery]
local = "maildir:var/mail"
outbound = "smtp://127.0.0.1:2526"
[log]
dir = "var/log"
[auth]
argon2_memory_kib = 16384
argon2_time_cost = 2
argon2_parallelism = 1
hash_workers = 3
""",
        encoding="utf-8",
    )
    assert cli.main(["-c", str(config), "check-config", "--skip-bind"]) == 0
    out = capsys.readouterr().out
    assert "argon2id m=16384 KiB t=2 p=1: " in out and " ms and 16 MiB per cold login" in out
    assert "auth.hash_workers = 3: at most 3 at once, 48 MiB" in out
    assert "meets OWASP's minimum (m=19 MiB t=2 p=1, or m=46 MiB t=1): no" in out
    assert "meets RFC 9106's second recommended option (m=64 MiB t=3 p=4): no" in out
    assert "warning: auth.argon2_*: m=16384 KiB t=2 p=1 is below OWASP's minimum" in out
