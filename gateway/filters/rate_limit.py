"""Outbound abuse (MIC Art. 7.2.c): per-login limits on messages and recipients per hour.

A stolen password shows as a burst of submissions. Past the first limit the sender gets
451 naming ``[rate_limit]`` (a person who really sends that much retries later); past
the second, higher one the mailbox is send-locked with the reason "suspected
compromise" and a ``mailbox_state`` event, so an operator sees it and unlocks after
checking (MIC 7.3). Refused attempts count too: a sender that keeps going after the
451 is what reaches the lock.

Only submission mail (an authenticated login) is counted, over a sliding hour, in this
process's memory. The counters live in ``COUNTERS``, not in the filter's ``Config``:
SIGHUP replaces the Config, the counts stay. A restart forgets them (the locks it
made are in the directory and stay).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.pipeline import MessageContext, Verdict, register
from gateway.smtp import replies

WINDOW_SECONDS = 3600.0
LOCK_REASON = "suspected compromise"


@dataclass(frozen=True, slots=True)
class Config:
    max_messages_per_hour: int = 300  # past it: 451
    max_recipients_per_hour: int = 2000
    lock_messages_per_hour: int = 1000  # past it: send-locked, and 451
    lock_recipients_per_hour: int = 5000


def validate(cfg: Config) -> list[str]:
    problems = []
    for kind in ("messages", "recipients"):
        limit = getattr(cfg, f"max_{kind}_per_hour")
        lock = getattr(cfg, f"lock_{kind}_per_hour")
        if lock <= limit:
            problems.append(
                f"lock_{kind}_per_hour: {lock} is not above max_{kind}_per_hour ({limit});"
                f" set it higher, e.g. {limit * 3}"
            )
    return problems


@dataclass(frozen=True, slots=True)
class Usage:
    messages: int
    recipients: int


class SendCounters:
    """Messages and recipients per login over the last ``window`` seconds."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, window: float = WINDOW_SECONDS
    ) -> None:
        self.clock = clock
        self.window = window
        self._sent: dict[str, deque[tuple[float, int]]] = {}
        self._next_sweep = 0.0

    def record(self, login: str, recipients: int) -> Usage:
        """Count one message to ``recipients`` for ``login``; the usage including it."""
        now = self.clock()
        self._sweep(now)
        sent = self._sent.setdefault(login.lower(), deque())
        self._expire(sent, now)
        sent.append((now, recipients))
        return Usage(len(sent), sum(n for _, n in sent))

    def _expire(self, sent: deque[tuple[float, int]], now: float) -> None:
        while sent and sent[0][0] <= now - self.window:
            sent.popleft()

    def _sweep(self, now: float) -> None:
        """Forget logins idle for a whole window, so memory follows the active senders."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window
        for login in [k for k, sent in self._sent.items() if sent[-1][0] <= now - self.window]:
            del self._sent[login]


# Per process, outside any Config: survives SIGHUP, not a restart.
COUNTERS = SendCounters()


async def _send_lock(ctx: MessageContext, login: str, why: str) -> None:
    """Send-lock ``login`` (unless it is already locked harder) and record it."""
    services = ctx.services
    if services is None:
        raise RuntimeError("rate_limit needs the directory to lock a mailbox")
    directory = services.directory

    def lock() -> str | None:
        mailbox = directory.get(login)
        if mailbox is None or mailbox.state != "active":
            return None
        directory.set_state(mailbox.address, "send-locked", LOCK_REASON)
        return mailbox.address

    address = await asyncio.to_thread(lock)
    if address is not None:
        services.events.emit(
            "mailbox_state",
            user=address,
            old_state="active",
            state="send-locked",
            reason=f"{LOCK_REASON}: {why}",
            actor="rate_limit",
            queue_id=ctx.queue_id,
            session=ctx.session_id,
            client=ctx.client,
        )


@register("rate_limit", Config, validate=validate)
async def check(ctx: MessageContext, cfg: Config) -> Verdict:
    if ctx.user is None:  # inbound mail: not ours to count
        return Verdict.accept()
    used = COUNTERS.record(ctx.user, len(ctx.recipients))
    if used.messages > cfg.lock_messages_per_hour:
        why = f"{used.messages} messages in an hour, the lock is at {cfg.lock_messages_per_hour}"
    elif used.recipients > cfg.lock_recipients_per_hour:
        why = (
            f"{used.recipients} recipients in an hour,"
            f" the lock is at {cfg.lock_recipients_per_hour}"
        )
    else:
        why = None
    if why is not None:
        await _send_lock(ctx, ctx.user, why)
        return Verdict.tempfail(
            replies.RATE_LIMITED, "rate_limit", f"{why}; sending is now locked ({LOCK_REASON})"
        )
    if used.messages > cfg.max_messages_per_hour:
        return Verdict.tempfail(
            replies.RATE_LIMITED,
            "rate_limit",
            f"more than {cfg.max_messages_per_hour} messages in an hour",
        )
    if used.recipients > cfg.max_recipients_per_hour:
        return Verdict.tempfail(
            replies.RATE_LIMITED,
            "rate_limit",
            f"more than {cfg.max_recipients_per_hour} recipients in an hour",
        )
    return Verdict.accept()
