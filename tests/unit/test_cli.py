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
