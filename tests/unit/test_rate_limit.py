"""filters/rate_limit.py: per-login messages and recipients per sliding hour (MIC 7.2.c);
451 past the limit, send-lock past the second threshold."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.directory.mailboxes import Directory, Registration
from gateway.events.writer import EventLog
from gateway.filters import rate_limit
from gateway.filters.rate_limit import Config, SendCounters, check
from gateway.pipeline import Action, MessageContext, Verdict
from gateway.smtp import replies
from tests.unit.fakes import MINIMAL_CONFIG, message_context

AN = "nvan@example.gov.vn"
BINH = "ttbinh@example.gov.vn"
SMALL = Config(
    max_messages_per_hour=3,
    max_recipients_per_hour=10,
    lock_messages_per_hour=5,
    lock_recipients_per_hour=20,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Services:
    directory: Directory
    events: EventLog


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(rate_limit, "COUNTERS", SendCounters(clock))
    return clock


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    directory = Directory.for_data_dir(tmp_path)
    for address in (AN, BINH):
        directory.add(Registration(address, address.split("@")[0]), None)
    events = EventLog(tmp_path / "log")
    yield Services(directory, events)
    events.close()
    directory.close()


def context(
    user: str | None = AN, recipients: int = 1, services: Services | None = None
) -> MessageContext:
    return message_context(
        listener="submission" if user else "inbound",
        user=user,
        sender=user or "x@other.org",
        recipients=[f"r{n}@other.org" for n in range(recipients)],
        services=services,
    )


async def send(times: int, cfg: Config = SMALL, **options: Any) -> list[Verdict]:
    return [await check(context(**options), cfg) for _ in range(times)]


def events(tmp_path: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted((tmp_path / "log").glob("events-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def assert_rate_limited(verdict: Verdict, words: str) -> None:
    assert verdict.action is Action.TEMPFAIL and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.status) == (451, replies.RATE_LIMITED.status)
    assert verdict.reply.status.startswith("4.7.")
    assert "[rate_limit]" in verdict.reply.text and words in verdict.reply.text


async def test_up_to_the_limit_passes_then_451_naming_the_rule(clock: Clock) -> None:
    verdicts = await send(4)
    assert [v.action for v in verdicts[:3]] == [Action.ACCEPT] * 3
    assert_rate_limited(verdicts[3], "more than 3 messages in an hour")


async def test_recipients_per_hour_count_too(clock: Clock) -> None:
    first, second = await send(2, recipients=6)
    assert first.action is Action.ACCEPT
    assert_rate_limited(second, "more than 10 recipients in an hour")


async def test_the_window_slides(clock: Clock) -> None:
    await send(2)
    clock.now += 1800
    await send(1)
    assert_rate_limited((await send(1))[0], "messages")
    clock.now += 1800  # the first two are an hour old now; two remain in the window
    assert (await send(1))[0].action is Action.ACCEPT
    assert_rate_limited((await send(1))[0], "messages")


async def test_each_login_has_its_own_count_whatever_its_case(clock: Clock) -> None:
    await send(3, user=AN)
    assert (await send(1, user=BINH))[0].action is Action.ACCEPT
    assert_rate_limited((await send(1, user=AN.upper()))[0], "messages")


async def test_inbound_mail_is_not_counted(clock: Clock) -> None:
    assert {v.action for v in await send(10, user=None)} == {Action.ACCEPT}
    assert (await send(1))[0].action is Action.ACCEPT


async def test_a_new_config_keeps_the_counts(clock: Clock) -> None:
    """SIGHUP builds a new Config; the counts must not start over with it."""
    await send(3, Config(max_messages_per_hour=10, lock_messages_per_hour=20))
    reloaded = Config(max_messages_per_hour=3, lock_messages_per_hour=20)
    assert_rate_limited((await send(1, reloaded))[0], "more than 3 messages")


async def test_past_the_lock_threshold_the_mailbox_is_send_locked(
    clock: Clock, services: Services, tmp_path: Path
) -> None:
    verdicts = await send(5, services=services)
    assert [v.action for v in verdicts] == [Action.ACCEPT] * 3 + [Action.TEMPFAIL] * 2
    assert services.directory.require(AN).state == "active", "451s alone do not lock"
    assert_rate_limited((await send(1, services=services))[0], "sending is now locked")
    mailbox = services.directory.require(AN)
    assert (mailbox.state, mailbox.lock_reason) == ("send-locked", "suspected compromise")
    assert services.directory.require(BINH).state == "active"
    services.events.close()
    (event,) = [e for e in events(tmp_path) if e["event"] == "mailbox_state"]
    assert event["user"] == AN and event["actor"] == "rate_limit"
    assert (event["old_state"], event["state"]) == ("active", "send-locked")
    assert "suspected compromise" in event["reason"] and "6 messages" in event["reason"]


async def test_lock_by_recipients_and_only_once(
    clock: Clock, services: Services, tmp_path: Path
) -> None:
    await send(2, services=services, recipients=9)  # 18: past the limit, under the lock
    assert services.directory.require(AN).state == "active"
    await send(2, services=services, recipients=9)
    assert services.directory.require(AN).state == "send-locked"
    services.events.close()
    locks = [e for e in events(tmp_path) if e["event"] == "mailbox_state"]
    assert len(locks) == 1 and "recipients" in locks[0]["reason"]


async def test_a_locked_mailbox_is_not_downgraded_to_send_locked(
    clock: Clock, services: Services
) -> None:
    services.directory.set_state(AN, "locked", "operator")
    verdicts = await send(6, services=services)
    assert_rate_limited(verdicts[5], "locked")
    assert services.directory.require(AN).state == "locked"


async def test_idle_logins_are_forgotten(clock: Clock) -> None:
    await send(1, user=AN)
    clock.now += 3601
    await send(1, user=BINH)
    assert list(rate_limit.COUNTERS._sent) == [BINH]


def test_lock_thresholds_must_be_above_the_limits() -> None:
    data = copy.deepcopy(MINIMAL_CONFIG)
    data["filters"] = {"rate_limit": {"max_messages_per_hour": 50, "lock_messages_per_hour": 50}}
    with pytest.raises(ConfigError) as failure:
        parse_config(data, Path("/tmp/gw.toml"))
    assert failure.value.problems == [
        "filters.rate_limit.lock_messages_per_hour: 50 is not above max_messages_per_hour"
        " (50); set it higher, e.g. 150"
    ]


def test_defaults_suit_a_ministry() -> None:
    config = parse_config(copy.deepcopy(MINIMAL_CONFIG), Path("/tmp/gw.toml"))
    assert config.filters.settings("rate_limit") == Config(300, 2000, 1000, 5000)
