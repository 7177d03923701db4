"""relay.py: the one reply to the end of DATA, and what gets spooled, bounced and logged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.delivery import Router
from gateway.events.writer import EventLog
from gateway.mime.model import Inspection, Scan
from gateway.pipeline import (
    REGISTRY,
    EnabledFilter,
    HeaderEdit,
    MessageContext,
    Verdict,
    register,
)
from gateway.relay import Relay
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from gateway.spool import Body, Spool, new_queue_id
from tests.unit.fakes import FakeDeliverer, make_config

SENDER = "an@example.gov.vn"
LOCAL_HOP = "maildir:/fake/mail"
OUTBOUND_HOP = "smtp://fake-relay:25"
MESSAGE = (
    "From: Nguyễn Văn An <an@example.gov.vn>\r\n"
    "To: binh@other.gov.vn\r\n"
    "Subject: Báo cáo tháng 11\r\n"
    "Message-ID: <m1@example.gov.vn>\r\n"
    "\r\n"
    "Nội dung.\r\n"
).encode()

OK_250 = Reply(250, "2.0.0", "Ok: queued as ABC")
TEMP_451 = Reply(451, "4.3.0", "try again later")
PERM_550 = Reply(550, "5.1.1", "no such user")


@dataclass
class Setup:
    config: Config
    relay: Relay
    spool: Spool
    events: EventLog
    local: FakeDeliverer
    outbound: FakeDeliverer

    def events_written(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.config.log.dir.glob("events-*.jsonl")):
            records += [json.loads(line) for line in path.read_text("utf-8").splitlines()]
        return records

    def named(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.events_written() if r["event"] == event]


def build(tmp_path: Path, filters: Sequence[EnabledFilter] = ()) -> Setup:
    config = make_config(tmp_path)
    router = Router(config)
    local, outbound = FakeDeliverer(LOCAL_HOP), FakeDeliverer(OUTBOUND_HOP)
    router.local, router.outbound = local, outbound
    spool = Spool(config.spool_dir)
    events = EventLog(config.log.dir)
    relay = Relay(config.gateway.hostname, router, spool, events, filters, 60.0)
    return Setup(config, relay, spool, events, local, outbound)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    built = build(tmp_path)
    yield built
    built.events.close()


def context(recipients: list[str], sender: str = SENDER, body: bytes = MESSAGE) -> MessageContext:
    return MessageContext(
        queue_id=new_queue_id(),
        session_id="sess01",
        listener="inbound",
        client="192.0.2.7",
        user=None,
        sender=sender,
        recipients=recipients,
        body=Body.from_bytes(body),
        received_at=datetime.now(UTC),
    )


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def dsn_blocks(raw: bytes) -> list[Any]:
    report = parse(raw)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = list(report.iter_parts())[1]
    assert status.get_content_type() == "message/delivery-status"
    return status.get_payload()


# -- outcomes ------------------------------------------------------------------------------


async def test_all_delivered_is_250_and_nothing_spooled(setup: Setup) -> None:
    ctx = context(["binh@example.gov.vn", "chi@other.gov.vn"])
    reply = await setup.relay.handle(ctx)

    assert (reply.code, reply.status) == (replies.QUEUED.code, replies.QUEUED.status)
    assert reply.text == f"{replies.QUEUED.text} {ctx.queue_id}"
    assert setup.spool.load() == ([], [])
    assert list(setup.spool.queue.iterdir()) == []
    assert setup.local.calls == [(SENDER, ["binh@example.gov.vn"])]
    assert setup.outbound.calls == [(SENDER, ["chi@other.gov.vn"])]
    assert setup.local.bodies == setup.outbound.bodies == [MESSAGE]


async def test_routing_by_domain_ignores_case(setup: Setup) -> None:
    await setup.relay.handle(context(["A@EXAMPLE.gov.vn", "b@example.gov.vn.other.vn"]))
    assert [c[1] for c in setup.local.calls] == [["A@EXAMPLE.gov.vn"]]
    assert [c[1] for c in setup.outbound.calls] == [["b@example.gov.vn.other.vn"]]


async def test_all_temporary_is_451_and_nothing_spooled(setup: Setup) -> None:
    setup.local.default = setup.outbound.default = TEMP_451
    ctx = context(["binh@example.gov.vn", "chi@other.gov.vn"])
    reply = await setup.relay.handle(ctx)

    assert reply.code == replies.NEXT_HOP_UNAVAILABLE.code
    assert reply.status == replies.NEXT_HOP_UNAVAILABLE.status
    assert reply.text == f"{replies.NEXT_HOP_UNAVAILABLE.text} [delivery]"
    # The next hop's words (they may name internal hosts) stay out of the reply...
    assert str(TEMP_451) not in reply.text and "fake-relay" not in reply.text
    # ...and go to the event log.
    (end,) = setup.named("message_tempfailed")
    assert str(TEMP_451) in end["reason"] and OUTBOUND_HOP in end["reason"]
    assert setup.spool.load() == ([], [])
    assert list(setup.spool.queue.iterdir()) == []
    assert end["code"] == 451


async def test_all_permanent_is_5xx_with_the_next_hops_code(setup: Setup) -> None:
    setup.local.default = setup.outbound.default = PERM_550
    reply = await setup.relay.handle(context(["binh@example.gov.vn", "chi@other.gov.vn"]))

    assert (reply.code, reply.status) == (550, "5.1.1")
    assert reply.text == f"{replies.REFUSED_BY_NEXT_HOP.text} [delivery]"
    assert setup.spool.load() == ([], [])  # no DSN either: the client gets the 5xx itself
    (end,) = setup.named("message_rejected")
    assert end["code"] == 550 and str(PERM_550) in end["reason"]
    assert setup.named("bounced") == []


async def test_delivered_and_temporary_spools_only_the_temporary(setup: Setup) -> None:
    setup.outbound.answers["slow@other.gov.vn"] = TEMP_451
    ctx = context(["binh@example.gov.vn", "slow@other.gov.vn", "fast@other.gov.vn"])
    reply = await setup.relay.handle(ctx)

    assert reply.code == replies.QUEUED.code == 250
    entries, problems = setup.spool.load()
    assert problems == []
    (entry,) = entries
    assert entry.queue_id == ctx.queue_id
    assert entry.sender == SENDER
    assert entry.pending == ["slow@other.gov.vn"]
    assert entry.attempts == 1
    assert entry.message_id == "<m1@example.gov.vn>"
    assert entry.next_attempt == pytest.approx(entry.arrival + 60.0)
    assert entry.last_error == {"slow@other.gov.vn": str(TEMP_451)}
    assert entry.failed == []
    assert setup.spool.body(ctx.queue_id).read() == MESSAGE
    (deferred,) = setup.named("deferred")
    assert deferred["recipients"] == ["slow@other.gov.vn"]
    assert deferred["next_hop"] == OUTBOUND_HOP


async def test_delivered_and_permanent_gives_250_and_a_dsn(setup: Setup) -> None:
    setup.outbound.answers["gone@other.gov.vn"] = PERM_550
    ctx = context(["binh@example.gov.vn", "gone@other.gov.vn"])
    reply = await setup.relay.handle(ctx)

    assert reply.code == replies.QUEUED.code == 250
    entries, problems = setup.spool.load()
    assert problems == []
    (dsn,) = entries
    assert dsn.queue_id != ctx.queue_id
    assert dsn.sender == ""
    assert dsn.pending == [SENDER]
    raw = setup.spool.body(dsn.queue_id).read()
    assert parse(raw)["To"] == SENDER
    per_message, per_recipient = dsn_blocks(raw)
    assert per_message["X-Mailgate-Queue-ID"] == ctx.queue_id
    assert per_recipient["Final-Recipient"] == "rfc822; gone@other.gov.vn"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; fake-relay", "RFC 3464: a host name"
    assert str(PERM_550) in per_recipient["Diagnostic-Code"]
    (bounced,) = setup.named("bounced")
    assert bounced["dsn_queue_id"] == dsn.queue_id
    assert bounced["recipients"] == ["gone@other.gov.vn"]


async def test_temporary_and_permanent_spools_and_bounces(setup: Setup) -> None:
    setup.outbound.answers = {"slow@other.gov.vn": TEMP_451, "gone@other.gov.vn": PERM_550}
    ctx = context(["slow@other.gov.vn", "gone@other.gov.vn"])
    reply = await setup.relay.handle(ctx)
    assert reply.code == 250
    entries, _ = setup.spool.load()
    by_sender = {e.sender: e for e in entries}
    assert by_sender[SENDER].pending == ["slow@other.gov.vn"]
    assert by_sender[""].pending == [SENDER]


async def test_null_sender_permanent_failure_is_not_bounced(setup: Setup) -> None:
    setup.outbound.answers["gone@other.gov.vn"] = PERM_550
    ctx = context(["binh@example.gov.vn", "gone@other.gov.vn"], sender="")
    reply = await setup.relay.handle(ctx)

    assert reply.code == 250
    assert setup.spool.load() == ([], [])
    (suppressed,) = setup.named("bounce_suppressed")
    assert suppressed["recipients"] == ["gone@other.gov.vn"]
    assert suppressed["queue_id"] == ctx.queue_id
    assert setup.named("bounced") == []


async def test_spool_failure_after_partial_delivery_is_a_tempfail(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(setup.spool, "enqueue", broken)
    setup.outbound.answers["slow@other.gov.vn"] = TEMP_451
    reply = await setup.relay.handle(context(["binh@example.gov.vn", "slow@other.gov.vn"]))
    assert (reply.code, reply.status) == (451, replies.SPOOL_UNAVAILABLE.status)
    assert reply.text.startswith(f"{replies.SPOOL_UNAVAILABLE.text} [spool]")


# -- filters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleConfig:
    reason: str = "looks wrong"


@dataclass
class Filters:
    enabled: dict[str, EnabledFilter]
    seen: list[str]  # names of the filters called, in order

    def chain(self, *names: str) -> list[EnabledFilter]:
        return [self.enabled[name] for name in names]


@pytest.fixture
def test_filters() -> Iterator[Filters]:
    """Three filters registered the way a filter module registers itself."""
    seen: list[str] = []

    @register("test_relay_accept", RuleConfig)
    async def accept(ctx: MessageContext, cfg: RuleConfig) -> Verdict:
        seen.append("accept")
        return Verdict.accept()

    @register("test_relay_reject", RuleConfig)
    async def reject(ctx: MessageContext, cfg: RuleConfig) -> Verdict:
        seen.append("reject")
        return Verdict.reject(replies.RELAY_DENIED, rule="test_relay_reject", reason=cfg.reason)

    @register("test_relay_boom", RuleConfig)
    async def boom(ctx: MessageContext, cfg: RuleConfig) -> Verdict:
        seen.append("boom")
        raise RuntimeError("filter bug")

    @register("test_relay_expand", RuleConfig)
    async def expand(ctx: MessageContext, cfg: RuleConfig) -> Verdict:
        seen.append("expand")
        return Verdict.transform(
            "test_relay_expand",
            "group staff@example.gov.vn expanded",
            recipients=["an@example.gov.vn", "chi@other.gov.vn"],
            header_edits=[HeaderEdit("X-Expanded", "staff"), HeaderEdit("Subject")],
        )

    @register("test_relay_after", RuleConfig)
    async def after(ctx: MessageContext, cfg: RuleConfig) -> Verdict:
        seen.append(f"after:{','.join(ctx.recipients)}")
        return Verdict.accept()

    @register("test_relay_inspect", RuleConfig)
    async def inspect_twice(ctx: MessageContext, cfg: RuleConfig) -> Verdict:
        seen.append(str((await ctx.inspection()).attachment_bytes))
        seen.append(str((await ctx.inspection()).attachment_bytes))
        return Verdict.accept()

    names = (
        "test_relay_accept",
        "test_relay_reject",
        "test_relay_boom",
        "test_relay_expand",
        "test_relay_after",
        "test_relay_inspect",
    )
    yield Filters({name: EnabledFilter(REGISTRY[name], RuleConfig()) for name in names}, seen)
    for name in names:
        REGISTRY.pop(name, None)


async def test_rejecting_filter_names_its_rule_and_nothing_is_delivered(
    tmp_path: Path, test_filters: Filters
) -> None:
    chain = test_filters.chain("test_relay_accept", "test_relay_reject", "test_relay_boom")
    setup = build(tmp_path, chain)
    ctx = context(["binh@example.gov.vn", "chi@other.gov.vn"])
    reply = await setup.relay.handle(ctx)

    assert (reply.code, reply.status) == (replies.RELAY_DENIED.code, replies.RELAY_DENIED.status)
    assert "[test_relay_reject]" in reply.text and "looks wrong" in reply.text
    assert test_filters.seen == ["accept", "reject"]
    assert setup.local.calls == [] and setup.outbound.calls == []
    assert setup.spool.load() == ([], [])
    (end,) = setup.named("message_rejected")
    assert end["reason"] == reply.text  # the rule and why, as the sender was told
    assert end["code"] == replies.RELAY_DENIED.code
    setup.events.close()


async def test_raising_filter_is_a_tempfail_naming_it(
    tmp_path: Path, test_filters: Filters
) -> None:
    setup = build(tmp_path, test_filters.chain("test_relay_boom", "test_relay_accept"))
    reply = await setup.relay.handle(context(["binh@example.gov.vn"]))

    assert (reply.code, reply.status) == (replies.LOCAL_ERROR.code, replies.LOCAL_ERROR.status)
    assert "[test_relay_boom]" in reply.text
    assert reply.is_temporary
    assert test_filters.seen == ["boom"]
    assert setup.local.calls == [] and setup.outbound.calls == []
    (end,) = [r for r in setup.events_written() if r["event"].startswith("message_")]
    assert "[test_relay_boom]" in end["reason"]
    assert end["code"] == replies.LOCAL_ERROR.code
    setup.events.close()


async def test_filter_tempfail_is_logged_as_tempfailed(
    tmp_path: Path, test_filters: Filters
) -> None:
    setup = build(tmp_path, test_filters.chain("test_relay_boom"))
    await setup.relay.handle(context(["binh@example.gov.vn"]))
    try:
        assert [r["event"] for r in setup.events_written()] == ["message_tempfailed"]
    finally:
        setup.events.close()


async def test_accepting_filters_let_the_message_through(
    tmp_path: Path, test_filters: Filters
) -> None:
    setup = build(tmp_path, test_filters.chain("test_relay_accept", "test_relay_accept"))
    reply = await setup.relay.handle(context(["binh@example.gov.vn"]))
    assert reply.code == 250
    assert test_filters.seen == ["accept", "accept"]
    assert len(setup.local.calls) == 1
    setup.events.close()


# -- events --------------------------------------------------------------------------------


async def test_events_carry_the_contract_fields(setup: Setup) -> None:
    setup.outbound.answers["slow@other.gov.vn"] = TEMP_451
    ctx = context(["binh@example.gov.vn", "slow@other.gov.vn"])
    await setup.relay.handle(ctx)

    records = setup.events_written()
    assert [r["event"] for r in records] == ["delivered", "deferred", "message_accepted"]
    (end,) = setup.named("message_accepted")
    assert datetime.strptime(end["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert end["session"] == "sess01"
    assert end["queue_id"] == ctx.queue_id
    assert end["message_id"] == "<m1@example.gov.vn>"
    assert end["sender"] == SENDER
    assert end["recipients"] == ["binh@example.gov.vn", "slow@other.gov.vn"]
    assert end["size"] == len(MESSAGE)
    assert end["code"] == 250
    assert end["client"] == "192.0.2.7"
    assert end["listener"] == "inbound"
    assert "user" not in end  # None fields are left out
    (delivered,) = setup.named("delivered")
    assert delivered["recipients"] == ["binh@example.gov.vn"]
    assert delivered["next_hop"] == LOCAL_HOP
    assert delivered["code"] == 250
    assert delivered["message_id"] == "<m1@example.gov.vn>"
    (deferred,) = setup.named("deferred")
    assert deferred["code"] == 451 and deferred["reason"] == str(TEMP_451)


async def test_rejection_event_carries_the_contract_fields(setup: Setup) -> None:
    setup.local.default = PERM_550
    ctx = context(["binh@example.gov.vn"])
    await setup.relay.handle(ctx)
    (end,) = setup.named("message_rejected")
    for key in ("ts", "event", "session", "message_id", "sender", "recipients", "size", "code"):
        assert key in end, key
    assert end["size"] == len(MESSAGE)
    (failed,) = setup.named("delivery_failed")
    assert failed["reason"] == str(PERM_550)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (b"Subject: x\r\nMessage-ID: <a@b>\r\n", "<a@b>"),
        (b"message-id:\r\n  <folded@b>\r\nTo: y\r\n", "<folded@b>"),
        (b"X-Message-ID: <not@this>\r\nMESSAGE-ID: <a@b>\r\n", "<a@b>"),
        (b"Subject: Message-ID: <no@no>\r\n", None),
        (b"Subject: x\r\n", None),
        (b"Message-ID:   \r\n", None),
    ],
)
def test_first_header_matches_the_email_parser(section: bytes, expected: str | None) -> None:
    from email.parser import BytesHeaderParser

    from gateway.pipeline import first_header

    assert first_header(section, b"Message-ID") == expected
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(section).get("Message-ID")
    assert (" ".join(str(parsed).split()) or None if parsed is not None else None) == expected


async def test_no_recipient_left_is_a_5xx_naming_why(setup: Setup) -> None:
    """Group expansion can leave nothing to deliver to; that is a 5xx, not a crash (451)."""
    reply = await setup.relay.handle(context([]))
    assert (reply.code, reply.status) == (
        replies.NO_DELIVERABLE_RECIPIENT.code,
        replies.NO_DELIVERABLE_RECIPIENT.status,
    )
    assert "[delivery]" in reply.text
    assert setup.local.calls == [] and setup.outbound.calls == []
    (end,) = setup.named("message_rejected")
    assert end["reason"] == reply.text


async def test_a_cancelled_relay_records_that_it_was_cut(setup: Setup) -> None:
    """Shutdown may cancel a relay past its grace: the record must say so."""
    started = asyncio.Event()

    async def slow(sender: str, recipients: Sequence[str], body: Body) -> dict[str, Reply]:
        started.set()
        await asyncio.sleep(3600)
        return {}

    setup.outbound.deliver = slow  # type: ignore[method-assign]
    task = asyncio.create_task(setup.relay.handle(context(["chi@other.gov.vn"])))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (cut,) = setup.named("relay_cancelled")
    assert cut["recipients"] == ["chi@other.gov.vn"]


async def test_a_transform_changes_recipients_and_headers_for_what_follows(
    tmp_path: Path, test_filters: Filters
) -> None:
    setup = build(tmp_path, test_filters.chain("test_relay_expand", "test_relay_after"))
    reply = await setup.relay.handle(context(["staff@example.gov.vn"]))
    assert reply.code == 250
    assert test_filters.seen == ["expand", "after:an@example.gov.vn,chi@other.gov.vn"]
    assert setup.local.calls == [(SENDER, ["an@example.gov.vn"])]
    assert setup.outbound.calls == [(SENDER, ["chi@other.gov.vn"])]
    delivered = parse(setup.local.bodies[0])
    assert delivered["X-Expanded"] == "staff"
    assert delivered["Subject"] is None  # removed, folded lines and all
    assert delivered["Message-ID"] == "<m1@example.gov.vn>"
    assert setup.local.bodies[0].endswith(b"\r\n\r\n" + MESSAGE.split(b"\r\n\r\n", 1)[1])
    (event,) = setup.named("message_transformed")
    assert event["reason"] == "[test_relay_expand] group staff@example.gov.vn expanded"
    assert event["recipients"] == ["an@example.gov.vn", "chi@other.gov.vn"]


async def test_the_message_is_inspected_once_however_many_ask(
    tmp_path: Path, test_filters: Filters
) -> None:
    calls: list[int] = []

    async def inspector(body: Body, scans: tuple[Scan, ...] = ()) -> Inspection:
        calls.append(1)
        return Inspection(parts=(), texts=(), attachment_bytes=7)

    setup = build(tmp_path, test_filters.chain("test_relay_inspect", "test_relay_inspect"))
    ctx = context(["binh@example.gov.vn"])
    ctx.inspector = inspector
    assert (await setup.relay.handle(ctx)).code == 250
    assert calls == [1] and test_filters.seen == ["7", "7", "7", "7"]


async def test_a_message_that_cannot_be_inspected_is_refused_5xx(
    tmp_path: Path, test_filters: Filters
) -> None:
    async def inspector(body: Body, scans: tuple[Scan, ...] = ()) -> Inspection:
        return Inspection((), (), 0, problems=("part 1.2: zip member inflates past 64 MiB",))

    setup = build(tmp_path, test_filters.chain("test_relay_inspect"))
    ctx = context(["binh@example.gov.vn"])
    ctx.inspector = inspector
    reply = await setup.relay.handle(ctx)
    assert (reply.code, reply.status) == (replies.CANNOT_INSPECT.code, "5.6.0")
    assert "[inspection]" in reply.text and "inflates past 64 MiB" in reply.text
    assert setup.local.calls == []
    (end,) = setup.named("message_rejected")
    assert end["reason"] == reply.text


async def test_the_parse_is_asked_for_the_scans_of_the_enabled_filters() -> None:
    """run_filters hands the enabled filters' scans, with their settings, to the one
    parse, so that the classification rules run where the texts are."""
    from gateway.filters.classification import Config as ClassificationConfig
    from gateway.filters.classification import find_marker
    from gateway.pipeline import Action, run_filters

    seen: list[tuple[Scan, ...]] = []

    async def inspector(body: Body, scans: tuple[Scan, ...] = ()) -> Inspection:
        seen.append(scans)
        return Inspection((), (), 0)

    cfg = ClassificationConfig(levels=("TỐI MẬT",), aliases=())
    enabled = [
        EnabledFilter(REGISTRY["attachment_cap"], REGISTRY["attachment_cap"].config_type()),
        EnabledFilter(REGISTRY["classification"], cfg),
    ]
    ctx = context(["binh@example.gov.vn"])
    ctx.inspector = inspector
    verdict = await run_filters(ctx, enabled)
    assert verdict.action is Action.ACCEPT
    assert seen == [(Scan("classification", find_marker, cfg),)]


# -- per-recipient bodies (signing: each recipient its own ciphertext) ------------------------


class GroupsStage:
    """A signing stage that gives each recipient a body of its own."""

    async def run(self, ctx: MessageContext) -> list[Verdict]:
        groups = [
            ((r,), Body.from_bytes(MESSAGE + f"for {r}\r\n".encode())) for r in ctx.recipients
        ]
        return [Verdict.transform("smime", "encrypted per recipient", deliveries=groups)]


async def test_each_recipient_gets_its_own_body_and_each_deferred_body_is_spooled(
    setup: Setup,
) -> None:
    setup.relay.signing = GroupsStage()  # type: ignore[assignment]
    setup.outbound.answers["slow@other.gov.vn"] = TEMP_451
    setup.outbound.answers["late@other.gov.vn"] = TEMP_451
    ctx = context(["fast@other.gov.vn", "slow@other.gov.vn", "late@other.gov.vn"])
    reply = await setup.relay.handle(ctx)

    assert reply.code == 250
    delivered = {
        tuple(recipients): body
        for (_, recipients), body in zip(setup.outbound.calls, setup.outbound.bodies, strict=True)
    }
    assert set(delivered) == {(r,) for r in ctx.recipients}  # one transaction per body
    assert delivered[("fast@other.gov.vn",)].endswith(b"for fast@other.gov.vn\r\n")
    entries, problems = setup.spool.load()
    assert problems == []
    by_recipient = {tuple(e.pending): e for e in entries}
    assert set(by_recipient) == {("slow@other.gov.vn",), ("late@other.gov.vn",)}
    assert {e.queue_id for e in entries} == {ctx.queue_id + ".1", ctx.queue_id + ".2"}
    for (recipient,), entry in by_recipient.items():
        assert setup.spool.body(entry.queue_id).read().endswith(f"for {recipient}\r\n".encode())
    assert "[smime] encrypted per recipient" in setup.named("message_transformed")[0]["reason"]


class BrokenStage:
    async def run(self, ctx: MessageContext) -> list[Verdict]:
        raise RuntimeError("openssl exploded")


async def test_a_failing_signing_stage_is_a_tempfail_never_unsigned_mail(setup: Setup) -> None:
    setup.relay.signing = BrokenStage()  # type: ignore[assignment]
    reply = await setup.relay.handle(context(["fast@other.gov.vn"]))
    assert reply.code == 451 and "[signing]" in reply.text
    assert setup.outbound.calls == []
    (tempfailed,) = setup.named("message_tempfailed")
    assert "[signing]" in tempfailed["reason"]
