"""Free webmail (MOST Art. 12.2, 16.1): official mail is not for gmail.com and the like.

Applies to submission mail (a local user's official mail): a recipient at a free
webmail domain, or a Reply-To: pointing to one (answers would leave the official
system). The operator picks the action: ``log`` (a ``message_transformed`` event naming
``[freemail]``, the message unchanged), ``tag`` (a header field naming the domains,
which a forged copy from the client cannot pre-empt) or ``reject`` (550 naming the rule).
Domains match exactly, case-insensitive: list ``yahoo.com.vn`` as well as ``yahoo.com``.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass

from gateway.pipeline import HeaderEdit, MessageContext, Verdict, header_values, register
from gateway.smtp import replies

ACTIONS = ("log", "tag", "reject")

FREE_DOMAINS = (
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "yahoo.com.vn",
    "ymail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "icloud.com",
    "me.com",
    "mail.ru",
    "yandex.com",
    "yandex.ru",
    "proton.me",
    "protonmail.com",
    "gmx.com",
    "gmx.net",
    "aol.com",
    "zoho.com",
    "mail.com",
    "qq.com",
    "163.com",
)


@dataclass(frozen=True, slots=True)
class Config:
    domains: tuple[str, ...] = FREE_DOMAINS
    action: str = "log"  # "log" | "tag" | "reject"
    header: str = "X-Mailgate-Freemail"  # the field "tag" adds


def validate(cfg: Config) -> list[str]:
    problems = []
    if cfg.action not in ACTIONS:
        problems.append(f'action: expected one of {", ".join(ACTIONS)}, got "{cfg.action}"')
    if not cfg.header.isascii() or any(c <= " " or c in ":\x7f" for c in cfg.header):
        problems.append(
            f'header: "{cfg.header}" is not a header field name;'
            ' use letters, digits and "-", e.g. "X-Mailgate-Freemail"'
        )
    for domain in cfg.domains:
        if not domain.isascii() or "." not in domain or any(c in domain for c in "@ \t:;,"):
            problems.append(
                f'domains: "{domain}" is not a domain name; write it as "gmail.com"'
                " (no @, ASCII: punycode for IDNs)"
            )
    return problems


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower()


def _reply_to_domains(ctx: MessageContext) -> list[str]:
    fields = header_values(ctx.body.headers, b"reply-to")  # raw: no email-parser classes
    return [_domain(address) for _, address in email.utils.getaddresses(fields) if "@" in address]


@register("freemail", Config, validate=validate)
async def check(ctx: MessageContext, cfg: Config) -> Verdict:
    if ctx.user is None:  # inbound mail from outside is not official mail we send
        return Verdict.accept()
    free = frozenset(d.lower() for d in cfg.domains)
    to = sorted({d for d in map(_domain, ctx.recipients) if d in free})
    reply_to = sorted({d for d in _reply_to_domains(ctx) if d in free})
    if not to and not reply_to:
        return Verdict.accept()
    found = []
    if to:
        found.append(f"recipient at {', '.join(to)}")
    if reply_to:
        found.append(f"Reply-To at {', '.join(reply_to)}")
    reason = "free webmail: " + "; ".join(found)
    if cfg.action == "reject":
        return Verdict.reject(replies.FREEMAIL_REFUSED, "freemail", reason)
    if cfg.action == "tag":
        value = "; ".join([*(f"to={d}" for d in to), *(f"reply-to={d}" for d in reply_to)])
        edits = [HeaderEdit(cfg.header), HeaderEdit(cfg.header, value)]
        return Verdict.transform("freemail", reason, header_edits=edits)
    return Verdict.transform("freemail", reason)
