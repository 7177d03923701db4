"""filters/attachment_cap.py: decoded attachment bytes per message against the cap."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.filters.attachment_cap import Config, check
from gateway.mime.model import Inspection
from gateway.pipeline import Action, MessageContext
from gateway.spool import Body

MIB = 1024 * 1024


def context(attachment_bytes: int) -> MessageContext:
    async def inspect(body: Body) -> Inspection:
        return Inspection(parts=(), texts=(), attachment_bytes=attachment_bytes)

    return MessageContext(
        queue_id="Q1",
        session_id="s1",
        listener="submission",
        client="192.0.2.1",
        user="an@example.gov.vn",
        sender="an@example.gov.vn",
        recipients=["binh@example.gov.vn"],
        body=Body.from_bytes(b"Subject: x\r\n\r\nbody\r\n"),
        received_at=datetime.now(UTC),
        inspector=inspect,
    )


async def test_exactly_the_cap_passes() -> None:
    verdict = await check(context(20 * MIB), Config())
    assert verdict.action is Action.ACCEPT


async def test_over_the_cap_is_552_stating_limit_and_size() -> None:
    verdict = await check(context(21 * MIB), Config())
    assert verdict.action is Action.REJECT and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.status) == (552, "5.3.4")
    assert "[attachment_cap]" in verdict.reply.text
    assert "21.0 MiB" in verdict.reply.text and "20.0 MiB" in verdict.reply.text


async def test_the_cap_is_the_operators() -> None:
    verdict = await check(context(2 * MIB), Config(max_bytes=1 * MIB))
    assert verdict.action is Action.REJECT
