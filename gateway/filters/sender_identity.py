"""On submission, the From: header must be the login or a unit delegated to it.

MAIL FROM is checked at the envelope (submission.py); this checks what the recipient
sees, so nobody signs mail with a colleague's or another unit's name (MOST 14.4,
MIC 12.3). Inbound mail is not touched: other domains vouch for their own senders.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.pipeline import MessageContext, Verdict, addresses_in, header_values, register
from gateway.smtp import replies


@dataclass(frozen=True, slots=True)
class Config:
    """Always on for submission; nothing to tune."""


@register("sender_identity", Config, always=True)
async def check(ctx: MessageContext, cfg: Config) -> Verdict:
    if ctx.user is None:  # inbound: no login, nothing to hold From: against
        return Verdict.accept()
    # The raw fields, not ``ctx.headers``: the email parser's address classes cost a
    # tenth of the submission path, and only the addresses matter here.
    addresses = addresses_in(header_values(ctx.body.headers, b"from"))
    if not addresses or any(not a for a in addresses):
        return Verdict.reject(
            replies.SENDER_NOT_ALLOWED, "sender_identity", "missing or unreadable From: header"
        )
    strangers = [a for a in addresses if a not in ctx.sender_identities]
    if strangers:
        return Verdict.reject(
            replies.SENDER_NOT_ALLOWED,
            "sender_identity",
            f"From: {', '.join(strangers)} is not {ctx.user} or a unit delegated to it",
        )
    return Verdict.accept()
