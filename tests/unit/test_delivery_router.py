"""delivery.Router: every recipient gets an outcome, whatever one next hop does."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.delivery import Outcome, Router
from gateway.delivery.client import HopReplies
from gateway.smtp.replies import NEXT_HOP_UNAVAILABLE, Reply
from gateway.spool import Body
from tests.unit.fakes import OK_250, FakeDeliverer, make_config

SENDER = "an@example.gov.vn"
BODY = Body.from_bytes(b"Subject: r\r\n\r\nbody\r\n")
LOCAL, FOREIGN = "binh@example.gov.vn", "chi@other.gov.vn"


class Raising(FakeDeliverer):
    def __init__(self, hop: str, error: BaseException) -> None:
        super().__init__(hop)
        self.error = error

    async def deliver(self, sender: str, recipients: Sequence[str], body: Body) -> dict[str, Reply]:
        raise self.error


class Forgetful(FakeDeliverer):
    """Answers for the first recipient only."""

    async def deliver(self, sender: str, recipients: Sequence[str], body: Body) -> dict[str, Reply]:
        return {recipients[0]: OK_250}


def router(tmp_path: Path, local: FakeDeliverer, outbound: FakeDeliverer) -> Router:
    built = Router(make_config(tmp_path))
    built.local, built.outbound = local, outbound
    return built


def assert_deferred(outcome: Outcome, hop: str) -> None:
    assert outcome.hop == hop
    assert (outcome.reply.code, outcome.reply.status) == (
        NEXT_HOP_UNAVAILABLE.code,
        NEXT_HOP_UNAVAILABLE.status,
    )


@pytest.mark.parametrize("error", [RuntimeError("bug in a deliverer"), KeyError("x")])
async def test_one_hop_raising_keeps_the_other_hops_outcomes(
    tmp_path: Path, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    local = FakeDeliverer("maildir:/fake")
    outbound = Raising("smtp://relay:25", error)
    with caplog.at_level(logging.ERROR, logger="gateway.delivery"):
        outcomes = await router(tmp_path, local, outbound).deliver(SENDER, [LOCAL, FOREIGN], BODY)
    assert outcomes[LOCAL] == Outcome(OK_250, "maildir:/fake")
    assert_deferred(outcomes[FOREIGN], "smtp://relay:25")
    assert type(error).__name__ in outcomes[FOREIGN].reply.text
    assert "Traceback" in caplog.text and type(error).__name__ in caplog.text


async def test_a_recipient_left_out_of_the_answer_is_deferred(tmp_path: Path) -> None:
    local = Forgetful("lmtp://store:24")
    outbound = FakeDeliverer("smtp://relay:25")
    second = "dung@example.gov.vn"
    outcomes = await router(tmp_path, local, outbound).deliver(
        SENDER, [LOCAL, second, FOREIGN], BODY
    )
    assert set(outcomes) == {LOCAL, second, FOREIGN}
    assert outcomes[LOCAL].reply == OK_250
    assert outcomes[FOREIGN].reply == OK_250
    assert_deferred(outcomes[second], "lmtp://store:24")
    assert "no reply" in outcomes[second].reply.text


async def test_the_hops_tls_note_reaches_the_outcome(tmp_path: Path) -> None:
    class Plain(FakeDeliverer):
        async def deliver(self, sender: str, recipients: Sequence[str], body: Body) -> HopReplies:
            answer = HopReplies.fromkeys(recipients, OK_250)
            answer.tls = "none: STARTTLS not offered"
            return answer

    outcomes = await router(tmp_path, FakeDeliverer("maildir:/x"), Plain("smtp://r:25")).deliver(
        SENDER, [LOCAL, FOREIGN], BODY
    )
    assert outcomes[FOREIGN].tls == "none: STARTTLS not offered"
    assert outcomes[LOCAL].tls is None
