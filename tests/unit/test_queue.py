"""queue.py: retries with backoff on a fake clock, bounces, and resuming after a crash."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, QueueSection
from gateway.delivery import Router
from gateway.dsn import FailedRecipient
from gateway.events.writer import EventLog
from gateway.pipeline import MessageContext
from gateway.queue import EXPIRED_STATUS, QueueRunner, next_delay
from gateway.relay import Relay
from gateway.smtp.replies import Reply
from gateway.spool import Body, QueueEntry, Spool, new_queue_id
from tests.unit.fakes import FakeDeliverer, make_config

SENDER = "an@example.gov.vn"
OUTBOUND_HOP = "smtp://fake-relay:25"
LOCAL_HOP = "maildir:/fake/mail"
MESSAGE = (
    b"From: An <an@example.gov.vn>\r\n"
    b"To: binh@other.gov.vn\r\n"
    b"Subject: report\r\n"
    b"Message-ID: <q1@example.gov.vn>\r\n"
    b"\r\n"
    b"Body.\r\n"
)
OK_250 = Reply(250, "2.0.0", "Ok")
TEMP_451 = Reply(451, "4.3.0", "try again later")
PERM_550 = Reply(550, "5.1.1", "no such user")
START = 1_900_000_000.0
SETTINGS = QueueSection(
    lifetime_hours=120.0,
    retry_min_seconds=60.0,
    retry_max_seconds=600.0,
    scan_interval_seconds=5.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    config: Config
    spool: Spool
    events: EventLog
    relay: Relay
    runner: QueueRunner
    clock: Clock
    local: FakeDeliverer
    outbound: FakeDeliverer

    def named(self, event: str) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.config.log.dir.glob("events-*.jsonl")):
            records += [json.loads(line) for line in path.read_text("utf-8").splitlines()]
        return [r for r in records if r["event"] == event]

    def entries(self) -> dict[str, QueueEntry]:
        entries, problems = self.spool.load()
        assert problems == []
        return {e.queue_id: e for e in entries}


def build(tmp_path: Path, clock: Clock | None = None) -> Setup:
    """A gateway's queue side; building a second one on the same folder is a restart."""
    config = make_config(tmp_path)
    router = Router(config)
    local, outbound = FakeDeliverer(LOCAL_HOP), FakeDeliverer(OUTBOUND_HOP)
    router.local, router.outbound = local, outbound
    spool = Spool(config.spool_dir)
    events = EventLog(config.log.dir)
    relay = Relay(config.gateway.hostname, router, spool, events, (), SETTINGS.retry_min_seconds)
    clock = clock or Clock()
    runner = QueueRunner(lambda: relay, lambda: SETTINGS, clock)
    return Setup(config, spool, events, relay, runner, clock, local, outbound)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    built = build(tmp_path)
    yield built
    built.events.close()


def spool_entry(setup: Setup, pending: list[str], **overrides: Any) -> QueueEntry:
    fields: dict[str, Any] = {
        "queue_id": new_queue_id(),
        "sender": SENDER,
        "pending": pending,
        "arrival": setup.clock.now - 60,
        "next_attempt": setup.clock.now,
        "attempts": 1,
        "message_id": "<q1@example.gov.vn>",
        "last_error": dict.fromkeys(pending, str(TEMP_451)),
    }
    fields.update(overrides)
    entry = QueueEntry(**fields)
    setup.spool.enqueue(entry, Body.from_bytes(MESSAGE))
    return entry


def dsns(setup: Setup) -> list[QueueEntry]:
    return [e for e in setup.entries().values() if e.sender == ""]


def status_blocks(setup: Setup, dsn: QueueEntry) -> list[Any]:
    report = BytesParser(policy=policy.default).parsebytes(setup.spool.body(dsn.queue_id).read())
    assert isinstance(report, EmailMessage)
    assert report.get_content_type() == "multipart/report"
    return list(report.iter_parts())[1].get_payload()


# -- backoff -------------------------------------------------------------------------------


def test_next_delay_doubles_from_min_and_is_capped() -> None:
    assert [next_delay(n, SETTINGS) for n in range(0, 8)] == [
        60.0,
        60.0,
        120.0,
        240.0,
        480.0,
        600.0,
        600.0,
        600.0,
    ]
    assert next_delay(500, SETTINGS) == 600.0  # no overflow for long-lived entries


# -- attempts ------------------------------------------------------------------------------


async def test_due_entry_delivered_is_removed_with_events(setup: Setup) -> None:
    entry = spool_entry(setup, ["binh@other.gov.vn", "chi@example.gov.vn"])
    assert await setup.runner.run_once() == 1

    assert setup.outbound.calls == [(SENDER, ["binh@other.gov.vn"])]
    assert setup.local.calls == [(SENDER, ["chi@example.gov.vn"])]
    assert setup.entries() == {}
    assert list(setup.spool.queue.iterdir()) == []
    delivered = setup.named("delivered")
    assert sorted(r["recipients"][0] for r in delivered) == [
        "binh@other.gov.vn",
        "chi@example.gov.vn",
    ]
    for record in delivered:
        assert record["queue_id"] == entry.queue_id
        assert record["message_id"] == "<q1@example.gov.vn>"
        assert record["code"] == 250
        assert record["attempt"] == 2
    (dequeued,) = setup.named("dequeued")
    assert dequeued["queue_id"] == entry.queue_id


async def test_entry_not_due_is_left_alone(setup: Setup) -> None:
    entry = spool_entry(setup, ["binh@other.gov.vn"], next_attempt=setup.clock.now + 1)
    assert await setup.runner.run_once() == 0
    assert setup.outbound.calls == []
    assert setup.entries()[entry.queue_id] == entry


async def test_temporary_failure_backs_off_exponentially_and_caps(setup: Setup) -> None:
    setup.outbound.default = TEMP_451
    entry = spool_entry(setup, ["binh@other.gov.vn"])
    delays = []
    for attempt in range(2, 8):
        assert await setup.runner.run_once() == 1
        saved = setup.entries()[entry.queue_id]
        assert saved.attempts == attempt
        assert saved.pending == ["binh@other.gov.vn"]
        assert saved.last_error == {"binh@other.gov.vn": str(TEMP_451)}
        delays.append(saved.next_attempt - setup.clock.now)
        assert await setup.runner.run_once() == 0  # not due yet
        setup.clock.now = saved.next_attempt
    assert delays == [120.0, 240.0, 480.0, 600.0, 600.0, 600.0]
    assert len(setup.outbound.calls) == 6
    deferred = setup.named("deferred")
    assert [r["attempt"] for r in deferred] == [2, 3, 4, 5, 6, 7]
    assert all(r["reason"] == str(TEMP_451) for r in deferred)
    scheduled = setup.named("retry_scheduled")
    assert [r["attempt"] for r in scheduled] == [2, 3, 4, 5, 6, 7]
    assert scheduled[0]["next_attempt"] == START + 120.0
    assert dsns(setup) == []


async def test_partial_delivery_keeps_only_the_rest(setup: Setup) -> None:
    setup.outbound.answers["slow@other.gov.vn"] = TEMP_451
    entry = spool_entry(setup, ["fast@other.gov.vn", "slow@other.gov.vn"])
    await setup.runner.run_once()
    saved = setup.entries()[entry.queue_id]
    assert saved.pending == ["slow@other.gov.vn"]
    assert saved.last_error == {"slow@other.gov.vn": str(TEMP_451)}
    setup.clock.now = saved.next_attempt
    await setup.runner.run_once()
    assert setup.outbound.calls[-1] == (SENDER, ["slow@other.gov.vn"])


async def test_lifetime_exceeded_bounces_with_4_4_7(setup: Setup) -> None:
    setup.outbound.default = TEMP_451
    entry = spool_entry(
        setup, ["slow@other.gov.vn"], arrival=setup.clock.now - SETTINGS.lifetime_hours * 3600
    )
    await setup.runner.run_once()

    assert entry.queue_id not in setup.entries()
    (dsn,) = dsns(setup)
    assert dsn.pending == [SENDER]
    per_message, per_recipient = status_blocks(setup, dsn)
    assert per_message["X-Mailgate-Queue-ID"] == entry.queue_id
    assert per_recipient["Final-Recipient"] == "rfc822; slow@other.gov.vn"
    assert per_recipient["Status"] == EXPIRED_STATUS == "4.4.7"
    assert "gave up after 120 h" in per_recipient["Diagnostic-Code"]
    assert str(TEMP_451) in per_recipient["Diagnostic-Code"]
    (bounced,) = setup.named("bounced")
    assert bounced["queue_id"] == entry.queue_id
    assert bounced["dsn_queue_id"] == dsn.queue_id


async def test_just_under_the_lifetime_is_retried(setup: Setup) -> None:
    setup.outbound.default = TEMP_451
    entry = spool_entry(
        setup,
        ["slow@other.gov.vn"],
        arrival=setup.clock.now - SETTINGS.lifetime_hours * 3600 + 1,
    )
    await setup.runner.run_once()
    assert setup.entries()[entry.queue_id].pending == ["slow@other.gov.vn"]
    assert dsns(setup) == []


async def test_permanent_failure_on_retry_bounces(setup: Setup) -> None:
    setup.outbound.answers = {"gone@other.gov.vn": PERM_550, "slow@other.gov.vn": TEMP_451}
    entry = spool_entry(setup, ["gone@other.gov.vn", "slow@other.gov.vn"])
    await setup.runner.run_once()

    entries = setup.entries()
    saved = entries[entry.queue_id]
    assert saved.pending == ["slow@other.gov.vn"]
    assert saved.failed == []  # the bounce is durable, so it is not kept twice
    (dsn,) = dsns(setup)
    _, per_recipient = status_blocks(setup, dsn)
    assert per_recipient["Final-Recipient"] == "rfc822; gone@other.gov.vn"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; fake-relay", "RFC 3464: a host name"


async def test_permanent_failure_of_the_last_recipient_bounces_and_removes(setup: Setup) -> None:
    setup.outbound.default = PERM_550
    entry = spool_entry(setup, ["gone@other.gov.vn"])
    await setup.runner.run_once()
    assert entry.queue_id not in setup.entries()
    assert len(dsns(setup)) == 1


async def test_bounce_of_a_bounce_is_suppressed(setup: Setup) -> None:
    setup.outbound.default = PERM_550
    entry = spool_entry(setup, ["gone@other.gov.vn"], sender="")
    await setup.runner.run_once()
    assert setup.entries() == {}
    (suppressed,) = setup.named("bounce_suppressed")
    assert suppressed["queue_id"] == entry.queue_id


async def test_dsn_entries_are_delivered_by_the_queue(setup: Setup) -> None:
    setup.outbound.default = PERM_550
    spool_entry(setup, ["gone@other.gov.vn"])
    await setup.runner.run_once()
    (dsn,) = dsns(setup)
    setup.clock.now = max(setup.clock.now, dsn.next_attempt)
    await setup.runner.run_once()
    assert setup.local.calls == [("", [SENDER])]
    assert setup.entries() == {}


# -- crashes -------------------------------------------------------------------------------


async def test_restart_resumes_pending_entries(tmp_path: Path) -> None:
    first = build(tmp_path)
    due = spool_entry(first, ["binh@other.gov.vn"])
    later = spool_entry(first, ["chi@other.gov.vn"], next_attempt=first.clock.now + 300)
    first.events.close()
    del first  # the process dies here

    restarted = build(tmp_path)
    assert await restarted.runner.run_once() == 1
    assert restarted.outbound.calls == [(SENDER, ["binh@other.gov.vn"])]
    assert list(restarted.entries()) == [later.queue_id]
    restarted.clock.now += 300
    assert await restarted.runner.run_once() == 1
    assert restarted.entries() == {}
    assert {r["queue_id"] for r in restarted.named("dequeued")} == {due.queue_id, later.queue_id}
    restarted.events.close()


async def test_crash_between_save_and_bounce_bounces_on_next_run(tmp_path: Path) -> None:
    """The entry was saved with its failures but the process died before the DSN was spooled."""
    first = build(tmp_path)
    failure = FailedRecipient("gone@other.gov.vn", "5.1.1", str(PERM_550), OUTBOUND_HOP)
    entry = spool_entry(
        first,
        [],
        failed=[asdict(failure)],
        last_error={},
        next_attempt=first.clock.now - 10,
    )
    first.events.close()

    restarted = build(tmp_path)
    assert await restarted.runner.run_once() == 1
    assert restarted.outbound.calls == [] and restarted.local.calls == []
    assert entry.queue_id not in restarted.entries()
    (dsn,) = dsns(restarted)
    _, per_recipient = status_blocks(restarted, dsn)
    assert per_recipient["Final-Recipient"] == "rfc822; gone@other.gov.vn"
    assert per_recipient["Status"] == "5.1.1"
    restarted.events.close()


async def test_corrupt_entry_is_reported_not_fatal(setup: Setup) -> None:
    good = spool_entry(setup, ["binh@other.gov.vn"])
    bad = spool_entry(setup, ["chi@other.gov.vn"])
    setup.spool.body_path(bad.queue_id).unlink()
    assert await setup.runner.run_once() == 1
    (corrupt,) = setup.named("spool_corrupt")
    assert bad.queue_id in corrupt["reason"]
    assert setup.outbound.calls == [(SENDER, ["binh@other.gov.vn"])]
    assert good.queue_id not in {e.queue_id for e in setup.spool.load()[0]}


async def test_a_failing_attempt_does_not_stop_the_others(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = spool_entry(setup, ["broken@other.gov.vn"])
    fine = spool_entry(setup, ["fine@other.gov.vn"])
    real = setup.outbound.deliver

    async def deliver(sender: str, recipients: Sequence[str], body: Body) -> dict[str, Reply]:
        if recipients == ["broken@other.gov.vn"]:
            raise RuntimeError("bug in a deliverer")
        return await real(sender, recipients, body)

    monkeypatch.setattr(setup.outbound, "deliver", deliver)
    assert await setup.runner.run_once() == 2
    remaining = setup.entries()
    assert fine.queue_id not in remaining
    # The router turns the exception into a 4xx for that hop's recipients: a recorded,
    # counted attempt that is retried later, never a lost result.
    kept = remaining[broken.queue_id]
    assert kept.pending == ["broken@other.gov.vn"]
    assert kept.attempts == 2
    assert "RuntimeError: bug in a deliverer" in kept.last_error["broken@other.gov.vn"]
    (deferred,) = [e for e in setup.named("deferred") if e["queue_id"] == broken.queue_id]
    assert deferred["code"] == 451


async def test_queue_scan_during_an_enqueue_keeps_the_body(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.outbound.answers["slow@other.gov.vn"] = TEMP_451
    in_save, scanned = threading.Event(), threading.Event()
    real_save, real_load = setup.spool.save, setup.spool.load

    def save(entry: QueueEntry) -> None:  # Spool.enqueue: .eml is renamed, .json is next
        in_save.set()
        scanned.wait(5)
        real_save(entry)

    def load() -> tuple[list[QueueEntry], list[str]]:
        result = real_load()
        scanned.set()
        return result

    monkeypatch.setattr(setup.spool, "save", save)
    monkeypatch.setattr(setup.spool, "load", load)
    ctx = MessageContext(
        queue_id=new_queue_id(),
        session_id="s1",
        listener="inbound",
        client="192.0.2.7",
        user=None,
        sender=SENDER,
        recipients=["fast@other.gov.vn", "slow@other.gov.vn"],
        body=Body.from_bytes(MESSAGE),
        received_at=datetime.now(UTC),
    )
    handling = asyncio.create_task(setup.relay.handle(ctx))
    assert await asyncio.to_thread(in_save.wait, 5)
    await setup.runner.run_once()  # the periodic scan, concurrent with the enqueue
    reply = await handling
    monkeypatch.undo()

    assert reply.code == 250
    entries, problems = setup.spool.load()
    assert problems == []
    assert [e.queue_id for e in entries] == [ctx.queue_id]


async def test_an_attempt_whose_state_cannot_be_saved_waits_for_the_backoff(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review saw a local recipient get a new copy every scan when an attempt raised
    after delivering: the entry must wait out a backoff before it is tried again."""
    entry = spool_entry(setup, ["binh@example.gov.vn", "slow@other.gov.vn"])
    setup.outbound.answers["slow@other.gov.vn"] = TEMP_451
    real_save = setup.spool.save

    def full_disk(saved: QueueEntry) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(setup.spool, "save", full_disk)
    assert await setup.runner.run_once() == 1
    assert len(setup.local.calls) == 1
    assert await setup.runner.run_once() == 0  # held back, not delivered again
    assert await setup.runner.run_once() == 0
    assert len(setup.local.calls) == 1
    (error,) = [e for e in setup.named("spool_error") if e.get("queue_id") == entry.queue_id]
    assert "OSError" in error["reason"]
    monkeypatch.setattr(setup.spool, "save", real_save)
    setup.clock.now += SETTINGS.retry_max_seconds + 1
    assert await setup.runner.run_once() == 1  # after the backoff it is tried again
