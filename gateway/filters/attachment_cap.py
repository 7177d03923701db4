"""Cap the decoded attachment bytes per message (MIC Art. 8.3.b: 20 MB), not wire bytes.

base64 makes a 20 MiB file about 27 MiB on the wire, so ``smtp.max_message_size``
(what SIZE advertises) must stay above the cap's wire size; config validation checks
that. Attachments are counted at every depth, forwarded messages included.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.pipeline import MessageContext, Verdict, register
from gateway.smtp import replies

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Config:
    max_bytes: int = 20 * MIB  # decoded attachment bytes per message


def _size(count: int) -> str:
    return f"{count / MIB:.1f} MiB ({count} bytes)"


@register("attachment_cap", Config)
async def check(ctx: MessageContext, cfg: Config) -> Verdict:
    found = (await ctx.inspection()).attachment_bytes
    if found <= cfg.max_bytes:
        return Verdict.accept()
    return Verdict.reject(
        replies.ATTACHMENTS_TOO_BIG,
        "attachment_cap",
        f"attachments total {_size(found)}, the limit is {_size(cfg.max_bytes)}",
    )
