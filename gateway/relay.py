"""The one reply a sender gets at the end of DATA: filters, delivery, and the 250 decision.

The gateway is a before-queue proxy. It answers 250 only when every recipient
was accepted by its next hop, durably spooled for retry, or durably turned
into a bounce; when every recipient failed temporarily it answers 4xx and
keeps nothing, so the sender retries and no copy exists twice.

One ``Relay`` lives as long as the process: a reload swaps its ``settings`` and
``router`` with plain assignments, so the queue and sessions in flight never
hold a stale object.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.bounces import Bouncer
from gateway.delivery import Outcome, Router
from gateway.events.writer import EventLog
from gateway.filters.groups import DIRECT
from gateway.outcomes import OutcomeLog, Split, failure_of
from gateway.pipeline import (
    Action,
    EnabledFilter,
    MessageContext,
    Verdict,
    apply_transform,
    run_filters,
)
from gateway.signing.stage import SigningStage
from gateway.smtp import replies
from gateway.smtp.replies import Reply
from gateway.spool import Body, QueueEntry, Spool

log = logging.getLogger(__name__)


def original_recipients(plan: dict[str, str]) -> dict[str, str]:
    """Member -> the group the sender named, for recipients a group expansion added."""
    return {r: route.split(" > ")[0] for r, route in plan.items() if route != DIRECT}


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """The parts of the config the relay reads; replaced whole on reload."""

    filters: tuple[EnabledFilter, ...]
    retry_min_seconds: float


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
        signing: SigningStage | None = None,
    ) -> None:
        self.signing = signing
        self.router = router
        self.spool = spool
        self.events = events
        self.settings = RelaySettings(tuple(filters), retry_min_seconds)
        self.bouncer = Bouncer(hostname, spool, events)
        self.outcomes = OutcomeLog(events)

    def reconfigure(self, hostname: str, router: Router, settings: RelaySettings) -> None:
        """SIGHUP: later messages use these; messages in flight finish with what they hold."""
        self.bouncer.hostname = hostname
        self.router = router
        self.settings = settings

    async def handle(self, ctx: MessageContext) -> Reply:
        """The reply to the end of DATA for ``ctx``; records its outcome even if cancelled."""
        try:
            return await self._handle(ctx)
        except asyncio.CancelledError:
            self.events.emit(
                "relay_cancelled",
                session=ctx.session_id,
                queue_id=ctx.queue_id,
                message_id=ctx.message_id,
                sender=ctx.sender,
                recipients=ctx.recipients,
                reason="shutdown cut the relay; the sender got no 250 and will retry",
            )
            raise

    async def _handle(self, ctx: MessageContext) -> Reply:
        settings, router = self.settings, self.router
        verdict = await run_filters(ctx, settings.filters, self._transformed)
        if verdict.action is not Action.ACCEPT:
            assert verdict.reply is not None
            event = "message_tempfailed" if verdict.reply.is_temporary else "message_rejected"
            self._emit_end(ctx, event, verdict.reply, reason=verdict.reply.text)
            return verdict.reply
        if not ctx.recipients:
            reply = replies.NO_DELIVERABLE_RECIPIENT.with_rule(
                "delivery", "no recipient is left to deliver to"
            )
            self._emit_end(ctx, "message_rejected", reply, reason=reply.text)
            return reply
        received = ctx.body
        if ctx.header_edits:
            ctx.body = await asyncio.to_thread(self._edited_body, ctx)
        if self.signing is not None:
            refusal = await self._sign(ctx, received)
            if refusal is not None:
                return refusal
        try:
            return await self._deliver(ctx, settings, router)
        finally:
            await self._drop_group_bodies(ctx, received)

    async def _deliver(self, ctx: MessageContext, settings: RelaySettings, router: Router) -> Reply:
        """Hand every body to its next hop; spool the deferred, bounce the failed; the
        reply that says which. Recipients with bodies of their own (``ctx.deliveries``)
        are delivered side by side."""
        groups = ctx.deliveries or [(tuple(ctx.recipients), ctx.body)]
        outcomes: dict[str, Outcome] = {}
        started = time.monotonic()
        for part in await asyncio.gather(
            *(router.deliver(ctx.sender, list(group), body) for group, body in groups)
        ):
            outcomes.update(part)
        split = Split.of(outcomes)
        took = round(time.monotonic() - started, 3)  # the delivery latency metric's input
        self.outcomes.hops(ctx.queue_id, ctx.message_id, ctx.sender, split, duration_s=took)
        if not split.delivered and not split.failed:
            # The next hop's own words (which may name internal hosts) stay in the events.
            reply = replies.NEXT_HOP_UNAVAILABLE.with_rule("delivery")
            detail = "; ".join(sorted({f"{o.hop}: {o.reply}" for o in split.deferred.values()}))
            self._emit_end(ctx, "message_tempfailed", reply, reason=f"{reply.text}: {detail}")
            return reply
        if not split.delivered and not split.deferred:
            first = next(iter(split.failed.values()))
            reply = Reply(
                first.reply.code, first.reply.status, f"{replies.REFUSED_BY_NEXT_HOP.text}"
            ).with_rule("delivery")
            self._emit_end(
                ctx, "message_rejected", reply, reason=f"{reply.text}: {first.hop}: {first.reply}"
            )
            return reply
        try:
            await self._keep_the_rest(ctx, split, settings)
        except OSError as exc:
            # Some recipients already have the message; the rest could not be made durable.
            # A 4xx may duplicate for the delivered ones, a 250 would lose the others:
            # duplicates are the lesser harm.
            log.error("spool write failed for %s: %s", ctx.queue_id, exc)
            reply = replies.SPOOL_UNAVAILABLE.with_rule("spool")
            self._emit_end(ctx, "message_tempfailed", reply, reason=f"spool write failed: {exc}")
            return reply
        reply = replies.QUEUED.with_text(f"{replies.QUEUED.text} {ctx.queue_id}")
        # Which rules looked at it (clamav among them: it was scanned), for the record.
        checks = [item.spec.name for item in settings.filters]
        self._emit_end(ctx, "message_accepted", reply, checks=checks or None)
        return reply

    async def _drop_group_bodies(self, ctx: MessageContext, received: Body) -> None:
        """Per-recipient bodies are delivered or spooled (the spool keeps its own copy);
        the handler drops the received body and ``ctx.body``, this the others."""
        kept = {id(received), id(ctx.body)}
        paths = {received.path, ctx.body.path}
        for _, body in ctx.deliveries or ():
            if id(body) not in kept and (body.path is None or body.path not in paths):
                await asyncio.to_thread(body.discard)

    async def _sign(self, ctx: MessageContext, received: Body) -> Reply | None:
        """The signing stage (gateway/signing/stage.py), last: new bodies, or a refusal.
        A body made on the way (header edits, an unsigned copy) is dropped once replaced;
        the handler drops the received one and the final one."""
        assert self.signing is not None
        try:
            verdicts = await self.signing.run(ctx)
        except Exception:  # a broken step must not send unsigned (or unstamped) mail: retry
            log.exception("signing stage failed on %s", ctx.queue_id)
            verdicts = [Verdict.tempfail(replies.LOCAL_ERROR, "signing", "signing stage error")]
        for verdict in verdicts:
            if verdict.action is Action.TRANSFORM:
                replaced = ctx.body
                apply_transform(ctx, verdict)
                self._transformed(ctx, verdict)
                kept = (received, ctx.body)
                if replaced not in kept and replaced.path not in {b.path for b in kept}:
                    await asyncio.to_thread(replaced.discard)
                continue
            if verdict.action is Action.ACCEPT:
                continue
            assert verdict.reply is not None
            event = "message_tempfailed" if verdict.reply.is_temporary else "message_rejected"
            self._emit_end(ctx, event, verdict.reply, reason=verdict.reply.text)
            return verdict.reply
        return None

    def _transformed(self, ctx: MessageContext, verdict: Verdict) -> None:
        """Every verdict that is not a plain accept is an event, transforms included."""
        self.events.emit(
            "message_transformed",
            session=ctx.session_id,
            queue_id=ctx.queue_id,
            message_id=ctx.message_id,
            recipients=ctx.recipients if verdict.recipients is not None else None,
            reason=f"[{verdict.rule}] {verdict.reason}",
        )

    def _edited_body(self, ctx: MessageContext) -> Body:
        add = [(e.name, e.value) for e in ctx.header_edits if e.value is not None]
        remove = frozenset(e.name.lower() for e in ctx.header_edits if e.value is None)
        return self.spool.with_header_edits(ctx.body, add, remove, ctx.queue_id)

    async def _keep_the_rest(
        self, ctx: MessageContext, split: Split, settings: RelaySettings
    ) -> None:
        """Spool deferred recipients and bounce failed ones, durably, before the 250."""
        now = time.time()
        originals = original_recipients(ctx.delivery_plan)
        groups = ctx.deliveries or [(tuple(ctx.recipients), ctx.body)]
        for index, (group, body) in enumerate(groups):
            pending = [r for r in group if r in split.deferred]
            if not pending:
                continue
            # Each body its own entry: ID, ID.1, ... (recipients with their own ciphertext).
            entry = QueueEntry(
                queue_id=ctx.queue_id if index == 0 else f"{ctx.queue_id}.{index}",
                sender=ctx.sender,
                pending=pending,
                arrival=now,
                next_attempt=now + settings.retry_min_seconds,
                attempts=1,
                message_id=ctx.message_id,
                last_error={r: str(split.deferred[r].reply) for r in pending},
                original={r: g for r, g in originals.items() if r in pending},
            )
            await asyncio.to_thread(self.spool.enqueue, entry, body)
        if split.failed:
            failures = [failure_of(r, o, originals.get(r)) for r, o in split.failed.items()]
            await self.bouncer.bounce(ctx.queue_id, ctx.sender, now, failures, ctx.body.headers)

    def _emit_end(
        self,
        ctx: MessageContext,
        event: str,
        reply: Reply,
        reason: str | None = None,
        checks: list[str] | None = None,
    ) -> None:
        self.events.emit(
            event,
            session=ctx.session_id,
            queue_id=ctx.queue_id,
            message_id=ctx.message_id,
            sender=ctx.sender,
            recipients=list(ctx.envelope_recipients),  # as received; the plan says who got it
            delivery_plan=ctx.delivery_plan or None,
            size=ctx.body.size,
            code=reply.code,
            reason=reason,
            user=ctx.user,
            client=ctx.client,
            listener=ctx.listener,
            checks=checks,
        )
