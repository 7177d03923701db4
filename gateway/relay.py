"""What happens to a message after DATA: filters, delivery, and the one reply the sender gets.

The gateway is a before-queue proxy. It answers 250 only when every recipient
was accepted by its next hop, durably spooled for retry, or durably turned
into a bounce; when every recipient failed temporarily it answers 4xx and
keeps nothing, so the sender retries and no copy exists twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.config import parse_host_port
from gateway.delivery import Outcome, Router
from gateway.dsn import FailedRecipient, build_dsn, is_bounce_worthy
from gateway.events.writer import EventLog
from gateway.pipeline import Action, EnabledFilter, MessageContext, run_filters
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from gateway.spool import Body, QueueEntry, Spool, new_queue_id

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Split:
    """Recipients sorted by what their next hop said."""

    delivered: dict[str, Outcome]
    deferred: dict[str, Outcome]
    failed: dict[str, Outcome]

    @classmethod
    def of(cls, outcomes: dict[str, Outcome]) -> Split:
        return cls(
            {r: o for r, o in outcomes.items() if o.reply.is_success},
            {r: o for r, o in outcomes.items() if o.reply.is_temporary},
            {r: o for r, o in outcomes.items() if o.reply.is_permanent},
        )


def remote_mta(hop: str) -> str | None:
    """The host name a DSN's Remote-MTA field wants (``dns; HOST``), if the hop has one."""
    _, sep, rest = hop.partition("://")
    address = parse_host_port(rest) if sep else None
    return address.host if address else None


def failure_of(recipient: str, outcome: Outcome) -> FailedRecipient:
    reply = outcome.reply
    return FailedRecipient(recipient, reply.status, str(reply), remote_mta(outcome.hop))


class Relay:
    """Delivers accepted messages now, and spools or bounces what cannot be delivered now."""

    def __init__(
        self,
        hostname: str,
        router: Router,
        spool: Spool,
        events: EventLog,
        filters: Sequence[EnabledFilter],
        retry_min_seconds: float,
    ) -> None:
        self.hostname = hostname
        self.router = router
        self.spool = spool
        self.events = events
        self.filters = filters
        self.retry_min_seconds = retry_min_seconds

    async def handle(self, ctx: MessageContext) -> Reply:
        """The reply to the end of DATA for ``ctx``."""
        verdict = await run_filters(ctx, self.filters)
        if verdict.action is not Action.ACCEPT:
            assert verdict.reply is not None
            event = "message_tempfailed" if verdict.reply.is_temporary else "message_rejected"
            self._emit_end(ctx, event, verdict.reply, reason=verdict.rule)
            return verdict.reply
        outcomes = await self.router.deliver(ctx.sender, ctx.recipients, ctx.body)
        split = Split.of(outcomes)
        self.emit_hops(ctx.queue_id, ctx.message_id, ctx.sender, split)
        if not split.delivered and not split.failed:
            first = next(iter(split.deferred.values()))
            reply = replies.NEXT_HOP_UNAVAILABLE.with_text(
                f"{replies.NEXT_HOP_UNAVAILABLE.text} [delivery]: {first.hop}: {first.reply}"
            )
            self._emit_end(ctx, "message_tempfailed", reply, reason="next hop unavailable")
            return reply
        if not split.delivered and not split.deferred:
            first = next(iter(split.failed.values())).reply
            reply = Reply(first.code, first.status, f"{first.text} [delivery]")
            self._emit_end(ctx, "message_rejected", reply, reason="refused by next hop")
            return reply
        try:
            await self._keep_the_rest(ctx, split)
        except OSError as exc:
            # Some recipients already have the message; the rest could not be made durable.
            # A 4xx may duplicate for the delivered ones, a 250 would lose the others:
            # duplicates are the lesser harm.
            log.error("spool write failed for %s: %s", ctx.queue_id, exc)
            reply = replies.SPOOL_UNAVAILABLE
            self._emit_end(ctx, "message_tempfailed", reply, reason=f"spool write failed: {exc}")
            return reply
        reply = replies.QUEUED.with_text(f"{replies.QUEUED.text} {ctx.queue_id}")
        self._emit_end(ctx, "message_accepted", reply)
        return reply

    async def _keep_the_rest(self, ctx: MessageContext, split: Split) -> None:
        """Spool deferred recipients and bounce failed ones, durably, before the 250."""
        now = time.time()
        if split.deferred:
            entry = QueueEntry(
                queue_id=ctx.queue_id,
                sender=ctx.sender,
                pending=list(split.deferred),
                arrival=now,
                next_attempt=now + self.retry_min_seconds,
                attempts=1,
                message_id=ctx.message_id,
                last_error={r: str(o.reply) for r, o in split.deferred.items()},
            )
            await asyncio.to_thread(self.spool.enqueue, entry, ctx.body)
        if split.failed:
            failures = [failure_of(r, o) for r, o in split.failed.items()]
            await self.bounce(ctx.queue_id, ctx.sender, now, failures, ctx.body.headers)

    async def bounce(
        self,
        queue_id: str,
        sender: str,
        arrival: float,
        failures: Sequence[FailedRecipient],
        original_headers: bytes,
    ) -> None:
        """Spool an RFC 3464 DSN to ``sender`` (never for bounces themselves)."""
        recipients = [f.recipient for f in failures]
        if not is_bounce_worthy(sender):
            self.events.emit(
                "bounce_suppressed",
                queue_id=queue_id,
                sender=sender,
                recipients=recipients,
                reason="null sender",
            )
            return
        dsn = build_dsn(
            reporting_mta=self.hostname,
            original_sender=sender,
            queue_id=queue_id,
            arrival=datetime.fromtimestamp(arrival, UTC),
            failures=failures,
            original_headers=original_headers,
        )
        dsn_id = new_queue_id()
        now = time.time()
        entry = QueueEntry(dsn_id, "", [sender], now, now, message_id=None)
        await asyncio.to_thread(self.spool.enqueue, entry, Body.from_bytes(dsn))
        self.events.emit(
            "bounced",
            queue_id=queue_id,
            sender=sender,
            recipients=recipients,
            reason="; ".join(f"{f.recipient}: {f.diagnostic}" for f in failures),
            dsn_queue_id=dsn_id,
        )

    def emit_hops(
        self,
        queue_id: str,
        message_id: str | None,
        sender: str,
        split: Split,
        **extra: object,
    ) -> None:
        """One event per (outcome, next hop, reply): delivered, deferred, delivery_failed."""
        for event, group in (
            ("delivered", split.delivered),
            ("deferred", split.deferred),
            ("delivery_failed", split.failed),
        ):
            by_hop: dict[tuple[str, Reply], list[str]] = {}
            for recipient, outcome in group.items():
                by_hop.setdefault((outcome.hop, outcome.reply), []).append(recipient)
            for (hop, reply), recipients in by_hop.items():
                self.events.emit(
                    event,
                    queue_id=queue_id,
                    message_id=message_id,
                    sender=sender,
                    recipients=recipients,
                    next_hop=hop,
                    code=reply.code,
                    reason=None if reply.is_success else str(reply),
                    **extra,
                )

    def _emit_end(
        self, ctx: MessageContext, event: str, reply: Reply, reason: str | None = None
    ) -> None:
        self.events.emit(
            event,
            session=ctx.session_id,
            queue_id=ctx.queue_id,
            message_id=ctx.message_id,
            sender=ctx.sender,
            recipients=ctx.recipients,
            size=ctx.body.size,
            code=reply.code,
            reason=reason,
            user=ctx.user,
            client=ctx.client,
            listener=ctx.listener,
        )
