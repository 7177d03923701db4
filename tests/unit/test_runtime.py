"""runtime.py: a reload that meets any error keeps the running config; per-listener caps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import runtime as runtime_module
from gateway.directory.mailboxes import Directory
from gateway.runtime import Runtime
from gateway.smtp.server import ConnectionLimiter
from tests.unit.fakes import make_config


async def test_reload_keeps_the_config_on_an_unexpected_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(tmp_path)
    runtime = Runtime(config, Directory.for_data_dir(config.gateway.data_dir))

    def explode(path: Path) -> None:
        raise ValueError("embedded null byte")

    monkeypatch.setattr(runtime_module, "load_config", explode)
    assert await runtime.reload() is False
    assert runtime.config is config
    records = [
        json.loads(line)
        for path in config.log.dir.glob("events-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    (rejected,) = [r for r in records if r["event"] == "config_rejected"]
    assert rejected["reason"] == "ValueError: embedded null byte"
    await runtime.close()


def test_each_listener_has_its_own_cap_inside_the_global_one() -> None:
    total = ConnectionLimiter(3, 2, total_key="smtp.max_connections")
    inbound = ConnectionLimiter(2, total_key="smtp.max_connections_per_listener", parent=total)
    submission = ConnectionLimiter(2, total_key="smtp.max_connections_per_listener", parent=total)
    assert inbound.acquire("192.0.2.1") is None
    assert inbound.acquire("192.0.2.2") is None
    assert inbound.acquire("192.0.2.3") == "smtp.max_connections_per_listener"
    assert submission.acquire("192.0.2.1") is None  # inbound's flood left room here
    assert submission.acquire("192.0.2.4") == "smtp.max_connections"  # 3 in all
    inbound.release("192.0.2.2")
    # 192.0.2.1 holds one slot on each listener: the per-client cap counts both.
    assert submission.acquire("192.0.2.1") == "smtp.max_connections_per_client"
    assert total.active == 2 and inbound.active == 1 and submission.active == 1
