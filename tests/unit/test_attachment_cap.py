"""filters/attachment_cap.py: decoded attachment bytes per message against the cap."""

from __future__ import annotations

from gateway.filters.attachment_cap import Config, check
from gateway.mime.model import Inspection
from gateway.pipeline import Action, MessageContext
from tests.unit.fakes import message_context

MIB = 1024 * 1024


def context(attachment_bytes: int) -> MessageContext:
    return message_context(
        listener="submission",
        user="an@example.gov.vn",
        sender="an@example.gov.vn",
        inspection=Inspection(parts=(), texts=(), attachment_bytes=attachment_bytes),
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
