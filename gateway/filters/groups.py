"""Group mailboxes (MOST 12.5.c, MIC 5.2): mail to a group reaches each member once.

Two moments. At RCPT (``rcpt_refusal``, called by the SMTP handler) a group is refused
when its sender may not post to it, or when it has nobody to deliver to: refused there,
the sender's own MTA reports it, and nothing is accepted into nowhere. At the end of
DATA (``check``, the last filter, so refused mail is never expanded) each group named
in the envelope is replaced by its members: through nested groups, de-duplicated against
the other recipients and each other, revoked members skipped, locked ones kept (they
still receive, MIC 7.1). The group's own folder gets nothing. Headers are not touched:
the members see the To:/Cc: the sender wrote.

Who may post, per group (``mailgate group policy``), else ``default_post_policy``:
``anyone``; ``local``: an authenticated login on the submission listeners (an inbound
MAIL FROM in our own domain proves nothing, so it counts as outside); ``members``: an
authenticated login that is a member, or whose envelope sender (itself or a unit
delegated to it) is one, directly or through a nested group.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.directory.mailboxes import POST_POLICIES, Directory, Mailbox
from gateway.pipeline import MessageContext, Verdict, register
from gateway.smtp import replies
from gateway.smtp.replies import Reply

RULE = "groups"
DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Config:
    default_post_policy: str = "local"  # for groups without their own policy
    max_recipients: int = 5000  # members one message may fan out to, after de-duplication


def validate(cfg: Config) -> list[str]:
    if cfg.default_post_policy not in POST_POLICIES:
        return [
            f"default_post_policy: {cfg.default_post_policy!r} is not a post policy;"
            f" write one of {', '.join(POST_POLICIES)}"
        ]
    return []


def rcpt_refusal(
    directory: Directory, group: Mailbox, cfg: Config, user: str | None, sender: str
) -> Reply | None:
    """Why RCPT TO ``group`` is refused for this sender, or None (blocking: a thread)."""
    policy = group.post_policy or cfg.default_post_policy
    if policy == "local" and user is None:
        return replies.GROUP_POST_REFUSED.with_rule(
            RULE, f"{group.address} accepts mail from local senders only"
        )
    if policy == "members" and (
        user is None  # members are our own mailboxes: they send through submission
        or not any(who and directory.is_member(group.address, who) for who in {user, sender})
    ):
        return replies.GROUP_POST_REFUSED.with_rule(
            RULE, f"{group.address} accepts mail from its members only"
        )
    if not directory.has_deliverable_member(group.address):
        return replies.GROUP_EMPTY.with_rule(RULE, f"{group.address} has no deliverable member")
    return None


@dataclass(frozen=True, slots=True)
class Plan:
    """The final recipients in order, and how each was reached."""

    recipients: list[str]
    routes: dict[str, str]  # recipient -> "direct" or "GROUP > NESTED > ..."
    members: dict[str, list[str]]  # group named in the envelope -> the copies it added


def plan_delivery(
    recipients: list[str], groups: frozenset[str], routes_of: dict[str, dict[str, tuple[str, ...]]]
) -> Plan:
    """Direct recipients keep their place and their one copy; each group then adds the
    members nobody before it reached (local parts compare case-insensitively)."""
    final: list[str] = []
    routes: dict[str, str] = {}
    seen: set[str] = set()
    named = [r for r in recipients if r.lower() not in groups]
    for address in named:
        seen.add(address.lower())
        final.append(address)
        routes[address] = DIRECT
    members: dict[str, list[str]] = {}
    for group in (r for r in recipients if r.lower() in groups):
        added = members.setdefault(group, [])
        for member, chain in routes_of[group].items():
            if member.lower() in seen:
                continue
            seen.add(member.lower())
            final.append(member)
            added.append(member)
            routes[member] = " > ".join(chain)
    return Plan(final, routes, members)


@register(RULE, Config, validate=validate)
async def check(ctx: MessageContext, cfg: Config) -> Verdict:
    if not ctx.group_recipients:  # RCPT found no group: nothing to do, no lookup
        return Verdict.accept()
    if ctx.services is None:
        raise RuntimeError("groups needs the directory to expand a group")
    services = ctx.services
    groups = [r for r in ctx.recipients if r.lower() in ctx.group_recipients]

    def expand() -> dict[str, dict[str, tuple[str, ...]]]:
        return {group: services.directory.group_routes(group) for group in groups}

    plan = plan_delivery(ctx.recipients, ctx.group_recipients, await asyncio.to_thread(expand))
    if len(plan.recipients) > cfg.max_recipients:
        return Verdict.reject(
            replies.GROUP_TOO_BIG,
            RULE,
            f"{', '.join(groups)} expand to {len(plan.recipients)} recipients,"
            f" the limit is {cfg.max_recipients} (filters.groups.max_recipients)",
        )
    for group, added in plan.members.items():
        services.events.emit(
            "group_expanded",
            session=ctx.session_id,
            queue_id=ctx.queue_id,
            message_id=ctx.message_id,
            sender=ctx.sender,
            group=group,
            recipients=added,
            members=len(added),
            reason=f"[{RULE}] {group} delivered to {len(added)} member(s)",
        )
    return Verdict.transform(
        RULE,
        f"{len(groups)} group(s) expanded to {len(plan.recipients)} recipient(s)",
        recipients=plan.recipients,
        routes=plan.routes,
    )
