"""The in-memory limits each of ``smtp.processes`` processes enforces (gateway/processes.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.processes import per_process, share
from tests.unit.fakes import MINIMAL_CONFIG


@pytest.mark.parametrize(
    ("limit", "processes", "expected"),
    [(500, 1, 500), (500, 2, 250), (5, 2, 3), (1, 16, 1), (50, 3, 17), (20, 16, 2)],
)
def test_share_is_the_limit_divided_rounded_up(limit: int, processes: int, expected: int) -> None:
    assert share(limit, processes) == expected


def config_with(tmp_path: Path, **sections: dict) -> object:
    raw = copy.deepcopy(MINIMAL_CONFIG)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw, tmp_path / "gw.toml")


def test_one_process_keeps_the_config_as_it_is(tmp_path: Path) -> None:
    config = config_with(tmp_path)
    assert per_process(config, 1) is config


def test_each_of_two_processes_gets_half_of_every_in_memory_limit(tmp_path: Path) -> None:
    config = config_with(
        tmp_path,
        smtp={
            "processes": 2,
            "max_connections": 500,
            "max_connections_per_listener": 400,
            "max_connections_per_client": 5,
        },
        auth={"max_failures_per_address": 5, "max_failures_per_client": 20},
        filters={"rate_limit": {"max_messages_per_hour": 300, "lock_messages_per_hour": 1000}},
    )
    shared = per_process(config, 2)
    assert (
        shared.smtp.max_connections,
        shared.smtp.max_connections_per_listener,
        shared.smtp.max_connections_per_client,
    ) == (250, 200, 3)
    assert (shared.auth.max_failures_per_address, shared.auth.max_failures_per_client) == (3, 10)
    rate = shared.filters.settings("rate_limit")
    assert (rate.max_messages_per_hour, rate.lock_messages_per_hour) == (150, 500)
    assert (rate.max_recipients_per_hour, rate.lock_recipients_per_hour) == (1000, 2500)
    assert shared.smtp.max_message_size == config.smtp.max_message_size, "not a memory limit"
    assert shared.auth.failure_window_seconds == config.auth.failure_window_seconds


def test_a_divided_lock_stays_above_its_divided_limit(tmp_path: Path) -> None:
    """check-config demands lock > limit; ceil(4/2) == ceil(3/2) would lock first."""
    config = config_with(
        tmp_path,
        filters={"rate_limit": {"max_messages_per_hour": 3, "lock_messages_per_hour": 4}},
    )
    rate = per_process(config, 2).filters.settings("rate_limit")
    assert (rate.max_messages_per_hour, rate.lock_messages_per_hour) == (2, 3)
