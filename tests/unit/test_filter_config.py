"""filter_config.py: [filters] turns into the enabled filters, in order, with settings;
every mistake names filters.NAME.KEY."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, advisories, parse_config
from gateway.pipeline import REGISTRY
from tests.unit.fakes import MINIMAL_CONFIG


def parse(filters: dict[str, Any] | None, **smtp: Any) -> Any:
    data = copy.deepcopy(MINIMAL_CONFIG)
    if filters is not None:
        data["filters"] = filters
    data["smtp"].update(smtp)
    return parse_config(data, Path("/tmp/gw.toml"))


def problems(filters: dict[str, Any], **smtp: Any) -> list[str]:
    with pytest.raises(ConfigError) as failure:
        parse(filters, **smtp)
    return failure.value.problems


def test_content_rules_are_on_with_no_section() -> None:
    config = parse(None)
    assert config.filters.names()[0] == "sender_identity"
    assert "attachment_cap" in config.filters.names()
    assert config.filters.settings("attachment_cap").max_bytes == 20 * 1024 * 1024


def test_settings_and_enabled() -> None:
    config = parse({"attachment_cap": {"max_bytes": 1048576}})
    assert config.filters.settings("attachment_cap").max_bytes == 1048576
    off = parse({"attachment_cap": {"enabled": False}})
    assert "attachment_cap" not in off.filters.names()
    assert off.filters.names() == ["sender_identity", *off.filters.names()[1:]]


def test_mistakes_name_the_key_and_the_fix() -> None:
    found = problems(
        {
            "attachment_capp": {},
            "attachment_cap": {"max_bytes": "20MB", "max_byte": 1, "enabled": "yes"},
        }
    )
    assert any(
        p.startswith('filters.attachment_capp: no such filter; did you mean "attachment_cap"')
        for p in found
    )
    assert "filters.attachment_cap.enabled: expected true or false, got 'yes'" in found


def test_bad_values_are_reported_per_key() -> None:
    found = problems({"attachment_cap": {"max_bytes": "20MB", "max_byte": 1}})
    assert "filters.attachment_cap.max_bytes: expected a positive integer, got '20MB'" in found
    assert any(
        p.startswith('filters.attachment_cap.max_byte: unknown key; did you mean "max_bytes"')
        for p in found
    )


def test_order_is_checked_and_unlisted_filters_still_run() -> None:
    known = [name for name, spec in REGISTRY.items() if not spec.always]
    assert problems({"order": ["nope"]}) == [
        f"filters.order: no such filter: nope; known: {', '.join(known)}"
    ]
    config = parse({"order": []})
    assert "attachment_cap" in config.filters.names()


def test_a_size_too_small_for_the_attachment_allowance_is_a_warning() -> None:
    small = parse({"attachment_cap": {"max_bytes": 20 * 1024 * 1024}}, max_message_size=20_000_000)
    (warning,) = advisories(small)
    assert warning.startswith("smtp.max_message_size (20000000) refuses messages carrying")
    assert advisories(parse(None)) == []  # the defaults fit: 30 MiB of SIZE for 20 MiB
    assert advisories(parse({"attachment_cap": {"enabled": False}}, max_message_size=20_000)) == []


def test_a_default_off_filter_is_on_when_its_section_is_written() -> None:
    """ClamAV (off by default) runs once [filters.clamav] exists; its required address
    is checked only then, and enabled = false still turns it off."""
    assert "clamav" not in parse(None).filters.names()
    on = parse({"clamav": {"address": "127.0.0.1:3310"}})
    assert on.filters.names()[-2:] == ["clamav", "groups"]  # groups expand last
    assert any(p.startswith("filters.clamav.address: missing") for p in problems({"clamav": {}}))
    assert "clamav" not in parse({"clamav": {"enabled": False}}).filters.names()


def test_group_expansion_is_on_by_default_and_its_mistakes_name_the_key() -> None:
    assert parse(None).filters.settings("groups").default_post_policy == "local"
    assert problems({"groups": {"default_post_policy": "all", "max_recipients": 0}}) == [
        "filters.groups.max_recipients: expected a positive integer, got 0"
    ]
    assert problems({"groups": {"default_post_policy": "all"}}) == [
        "filters.groups.default_post_policy: 'all' is not a post policy;"
        " write one of anyone, local, members"
    ]
    assert parse({"groups": {"enabled": False}}).filters.settings("groups") is None
