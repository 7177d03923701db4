"""filters/freemail.py: official mail to free webmail, or with a Reply-To there (MOST
16.1), is logged, tagged or refused, as configured."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.filters.freemail import Config, check
from gateway.pipeline import Action, HeaderEdit, MessageContext
from gateway.smtp import replies
from gateway.spool import Body
from tests.unit.fakes import MINIMAL_CONFIG, message_context

AN = "nvan@example.gov.vn"


def context(
    recipients: tuple[str, ...] = ("partner@gmail.com",),
    reply_to: str | None = None,
    user: str | None = AN,
) -> MessageContext:
    head = f"From: {AN}\r\nSubject: x\r\n"
    if reply_to is not None:
        head += f"Reply-To: {reply_to}\r\n"
    return message_context(
        listener="submission" if user else "inbound",
        user=user,
        sender=AN if user else "x@gmail.com",
        recipients=list(recipients),
        body=Body.from_bytes(f"{head}\r\nbody\r\n".encode()),
    )


async def test_log_is_the_default_a_transform_without_edits_naming_the_domain() -> None:
    verdict = await check(context(("bob@example.gov.vn", "x@gmail.com")), Config())
    assert verdict.action is Action.TRANSFORM
    assert verdict.rule == "freemail" and verdict.header_edits == ()
    assert verdict.reason == "free webmail: recipient at gmail.com"
    assert verdict.recipients is None and verdict.body is None


async def test_official_and_other_domains_pass() -> None:
    for address in ("bob@example.gov.vn", "x@most.gov.vn", "x@notgmail.com", "x@gmail.com.vn"):
        verdict = await check(context((address,)), Config(action="reject"))
        assert verdict.action is Action.ACCEPT, address


async def test_inbound_mail_is_not_official_mail_we_send() -> None:
    verdict = await check(context(("bob@example.gov.vn",), "x@gmail.com", user=None), Config())
    assert verdict.action is Action.ACCEPT


async def test_domains_match_whatever_their_case() -> None:
    verdict = await check(context(("Partner@GMail.COM",)), Config(action="reject"))
    assert verdict.action is Action.REJECT


async def test_reject_is_550_naming_the_rule_and_the_domains() -> None:
    verdict = await check(
        context(("a@yahoo.com", "b@gmail.com", "c@gmail.com")), Config(action="reject")
    )
    assert verdict.action is Action.REJECT and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.status) == (550, "5.7.1")
    assert verdict.reply.text.startswith(replies.FREEMAIL_REFUSED.text)
    assert "[freemail]" in verdict.reply.text
    assert "recipient at gmail.com, yahoo.com" in verdict.reply.text


async def test_a_reply_to_at_free_webmail_counts() -> None:
    ctx = context(("bob@example.gov.vn",), '"An (nhà)" <an.personal@yahoo.com.vn>')
    verdict = await check(ctx, Config(action="reject"))
    assert verdict.action is Action.REJECT and verdict.reply is not None
    assert "Reply-To at yahoo.com.vn" in verdict.reply.text
    fine = context(("bob@example.gov.vn",), "cntt@example.gov.vn")
    assert (await check(fine, Config(action="reject"))).action is Action.ACCEPT


async def test_tag_adds_the_header_and_drops_a_forged_one() -> None:
    ctx = context(("a@gmail.com",), "b@proton.me")
    verdict = await check(ctx, Config(action="tag", header="X-Free"))
    assert verdict.action is Action.TRANSFORM
    assert verdict.header_edits == (
        HeaderEdit("X-Free"),
        HeaderEdit("X-Free", "to=gmail.com; reply-to=proton.me"),
    )


async def test_the_list_is_the_operators() -> None:
    cfg = Config(domains=("partner-mail.example",), action="reject")
    assert (await check(context(("x@gmail.com",)), cfg)).action is Action.ACCEPT
    assert (await check(context(("x@partner-mail.example",)), cfg)).action is Action.REJECT


def problems(section: dict[str, object]) -> list[str]:
    data = copy.deepcopy(MINIMAL_CONFIG)
    data["filters"] = {"freemail": section}
    with pytest.raises(ConfigError) as failure:
        parse_config(data, Path("/tmp/gw.toml"))
    return failure.value.problems


def test_config_mistakes_name_the_key() -> None:
    assert problems({"action": "drop"}) == [
        'filters.freemail.action: expected one of log, tag, reject, got "drop"'
    ]
    (header,) = problems({"header": "X Free:"})
    assert header.startswith("filters.freemail.header: ")
    (domain,) = problems({"domains": ["gmail.com", "@yahoo.com"]})
    assert domain.startswith('filters.freemail.domains: "@yahoo.com" is not a domain name')


def test_defaults() -> None:
    config = parse_config(copy.deepcopy(MINIMAL_CONFIG), Path("/tmp/gw.toml"))
    cfg = config.filters.settings("freemail")
    assert cfg.action == "log" and cfg.header == "X-Mailgate-Freemail"
    assert {"gmail.com", "yahoo.com", "yahoo.com.vn", "outlook.com"} <= set(cfg.domains)
