"""runtime.py: a reload that meets any error keeps the running config; per-listener caps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import runtime as runtime_module
from gateway.directory.mailboxes import Directory
from gateway.runtime import Runtime
from gateway.smtp.server import ConnectionLimiter
from gateway.spool import Body
from tests.integration.harness import render_toml
from tests.unit.fakes import MINIMAL_CONFIG, FakeDeliverer, make_config


def the_event(log_dir: Path, name: str) -> dict:
    """The one event named ``name`` in ``log_dir`` (fails if there are none or several)."""
    records = [
        json.loads(line)
        for path in log_dir.glob("events-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    (record,) = [r for r in records if r["event"] == name]
    return record


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
    rejected = the_event(config.log.dir, "config_rejected")
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


async def test_a_reload_that_adds_a_domain_routes_it_locally(tmp_path: Path) -> None:
    """The review: a kept router routed by the old domain list, so mail for a domain
    added by SIGHUP went to the outbound hop (and a removed one to the local store)."""
    config = make_config(tmp_path)
    config.path.write_text(config_text(["example.gov.vn"]))
    runtime = Runtime(config, Directory.for_data_dir(config.gateway.data_dir))
    router = runtime.relay.router
    router.local, router.outbound = FakeDeliverer("maildir:x"), FakeDeliverer("smtp://y:25")
    config.path.write_text(config_text(["example.gov.vn", "new.gov.vn"]))
    assert await runtime.reload() is True
    assert runtime.relay.router is router  # same hops: the router (and its pools) stays
    outcomes = await router.deliver("a@other.org", ["x@new.gov.vn"], Body.from_bytes(b"\r\n"))
    assert outcomes["x@new.gov.vn"].hop == "maildir:x"
    await runtime.close()


def config_text(domains: list[str]) -> str:
    sections = {name: dict(values) for name, values in MINIMAL_CONFIG.items()}
    sections["gateway"]["domains"] = domains
    return render_toml(sections)


async def test_a_reload_takes_new_argon2_parameters_and_cache_limits(tmp_path: Path) -> None:
    sections = {name: dict(values) for name, values in MINIMAL_CONFIG.items()}
    sections["auth"] = {"argon2_memory_kib": 8, "argon2_time_cost": 1, "argon2_parallelism": 1}
    config = make_config(tmp_path)
    config.path.write_text(render_toml(sections))
    runtime = Runtime(runtime_module.load_config(config.path))
    workers = runtime.authenticator.workers
    sections["auth"] = {
        "argon2_memory_kib": 16, "argon2_time_cost": 2, "argon2_parallelism": 1,
        "cache_ttl_seconds": 60, "cache_size": 10, "hash_workers": workers + 1,
    }  # fmt: skip
    config.path.write_text(render_toml(sections))
    assert await runtime.reload() is True
    auth = runtime.authenticator
    assert (auth.hasher.memory_cost, auth.hasher.time_cost) == (16, 2)
    assert runtime.directory.hasher is auth.hasher, "new passwords are hashed the new way"
    assert (auth.cache.ttl, auth.cache.size) == (60, 10)
    assert auth.workers == workers  # the pool keeps its size until a restart, and says so
    reloaded = the_event(runtime.config.log.dir, "config_reloaded")
    assert "auth.hash_workers" in reloaded["reason"]
    await runtime.close()


async def test_two_processes_each_enforce_half_the_limits_across_a_reload(
    tmp_path: Path,
) -> None:
    """smtp.processes is fixed at start; a reload keeps dividing by the running count."""
    sections = {name: dict(values) for name, values in MINIMAL_CONFIG.items()}
    sections["smtp"]["processes"] = 2
    sections["auth"] = {"max_failures_per_address": 5}
    config = make_config(tmp_path)
    config.path.write_text(render_toml(sections))
    runtime = Runtime(runtime_module.load_config(config.path))
    assert (runtime.connections.total, runtime.connections.per_client) == (250, 25)
    assert {listener.limiter.total for listener in runtime.listeners()} == {200}
    assert runtime.throttle.per_address == 3
    sections["smtp"]["processes"] = 4
    sections["smtp"]["max_connections"] = 100
    config.path.write_text(render_toml(sections))
    assert await runtime.reload() is True
    assert runtime.connections.total == 50, "still 2 processes until a restart"
    reloaded = the_event(runtime.config.log.dir, "config_reloaded")
    assert "smtp.processes" in reloaded["reason"]
    await runtime.close()
