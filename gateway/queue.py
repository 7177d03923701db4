"""Retries spooled recipients with backoff; bounces them when the lifetime runs out.

State is saved after every attempt, so a restart resumes where the last run
stopped; a crash between a next hop's 250 and that save can repeat one
delivery, never lose one (the same trade every store-and-forward MTA makes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict

from gateway.config import QueueSection
from gateway.dsn import FailedRecipient
from gateway.events.errors import describe
from gateway.outcomes import Split, failure_of, remote_mta
from gateway.relay import Relay
from gateway.spool import Body, QueueEntry

log = logging.getLogger(__name__)

EXPIRED_STATUS = "4.4.7"
PARALLEL_ATTEMPTS = 8


def next_delay(attempts: int, settings: QueueSection) -> float:
    """Exponential backoff from retry_min_seconds, capped at retry_max_seconds."""
    delay = settings.retry_min_seconds * (2 ** max(attempts - 1, 0))
    return min(delay, settings.retry_max_seconds)


class QueueRunner:
    """Walks ``spool/queue`` every ``scan_interval_seconds`` and works on due entries."""

    def __init__(
        self,
        relay: Callable[[], Relay],
        settings: Callable[[], QueueSection],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._relay = relay
        self._settings = settings
        self._clock = clock
        self._wake = asyncio.Event()
        # Entries whose last attempt raised (their state could not be saved): when to
        # look again. Without it, a failing entry was retried, and its delivered
        # recipients sent another copy, on every scan.
        self._held: dict[str, tuple[int, float]] = {}
        self._stopping = False

    @property
    def relay(self) -> Relay:
        """The current relay (a config reload may replace it)."""
        return self._relay()

    def stop(self) -> None:
        """Shutdown: start no new attempt; ``run`` returns once the ones under way end
        (cancelling an attempt after the next hop took the message would send it again)."""
        self._stopping = True
        self._wake.set()

    def wake(self) -> None:
        """Look at the queue now (after a new entry, or on demand)."""
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self.run_once()
            except Exception as exc:  # the spool folder itself failed: say so, keep trying
                log.exception("queue scan failed")
                self.relay.events.emit("spool_error", reason=f"{type(exc).__name__}: {exc}")
            self._wake.clear()
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings().scan_interval_seconds)

    async def run_once(self) -> int:
        """One pass over the queue; returns how many entries were attempted."""
        entries, problems = await asyncio.to_thread(self.relay.spool.load)
        for problem in problems:
            self.relay.events.emit("spool_corrupt", reason=problem)
        now = self._clock()
        due = [e for e in entries if e.next_attempt <= now and self._released(e.queue_id, now)]
        limit = asyncio.Semaphore(PARALLEL_ATTEMPTS)

        async def attempt(entry: QueueEntry) -> None:
            async with limit:
                if self._stopping:
                    return
                try:
                    await self.attempt(entry)
                except Exception as exc:
                    log.exception("queue attempt for %s failed", entry.queue_id)
                    self.relay.events.emit(
                        "internal_error", queue_id=entry.queue_id, reason=f"queue: {describe(exc)}"
                    )
                    self._hold(entry, exc)
                else:
                    self._held.pop(entry.queue_id, None)

        async with asyncio.TaskGroup() as group:
            for entry in due:
                group.create_task(attempt(entry))
        return len(due)

    def _released(self, queue_id: str, now: float) -> bool:
        held = self._held.get(queue_id)
        return held is None or held[1] <= now

    def _hold(self, entry: QueueEntry, exc: Exception) -> None:
        failures = self._held.get(entry.queue_id, (0, 0.0))[0] + 1
        until = self._clock() + next_delay(entry.attempts + failures, self._settings())
        self._held[entry.queue_id] = (failures, until)
        self.relay.events.emit(
            "spool_error",
            queue_id=entry.queue_id,
            message_id=entry.message_id,
            reason=f"attempt failed ({type(exc).__name__}: {exc}); next try after a backoff",
        )

    async def attempt(self, entry: QueueEntry) -> None:
        """Try the pending recipients once, then save, bounce or finish the entry.

        Progress is saved before the bounce is spooled, and the bounce list is kept
        in the entry until the bounce is durable, so a crash at any point repeats
        work at worst.
        """
        settings = self._settings()
        spool, events = self.relay.spool, self.relay.events
        body = await asyncio.to_thread(spool.body, entry.queue_id)
        if entry.pending:
            await self._deliver_pending(entry, body, settings)
            await asyncio.to_thread(spool.save, entry)
        if entry.failed:
            failures = [FailedRecipient(**failed) for failed in entry.failed]
            await self.relay.bouncer.bounce(
                entry.queue_id, entry.sender, entry.arrival, failures, body.headers
            )
            entry.failed = []
            self.wake()
            if entry.pending:
                await asyncio.to_thread(spool.save, entry)
        if not entry.pending:
            await asyncio.to_thread(spool.remove, entry.queue_id)
            events.emit("dequeued", queue_id=entry.queue_id, attempt=entry.attempts)

    async def _deliver_pending(self, entry: QueueEntry, body: Body, settings: QueueSection) -> None:
        started = time.monotonic()
        outcomes = await self.relay.router.deliver(entry.sender, entry.pending, body)
        split = Split.of(outcomes)
        entry.attempts += 1
        now = self._clock()
        self.relay.outcomes.hops(
            entry.queue_id,
            entry.message_id,
            entry.sender,
            split,
            attempt=entry.attempts,
            duration_s=round(time.monotonic() - started, 3),
        )
        failures = [failure_of(r, o, entry.original.get(r)) for r, o in split.failed.items()]
        entry.pending = list(split.deferred)
        entry.last_error = {r: str(o.reply) for r, o in split.deferred.items()}
        if entry.pending and now - entry.arrival >= settings.lifetime_hours * 3600:
            failures += [
                FailedRecipient(
                    r,
                    EXPIRED_STATUS,
                    f"gave up after {settings.lifetime_hours:g} h: {entry.last_error[r]}",
                    remote_mta(split.deferred[r].hop),
                    entry.original.get(r),
                )
                for r in entry.pending
            ]
            entry.pending = []
        entry.failed += [asdict(failure) for failure in failures]
        if entry.pending:
            entry.next_attempt = now + next_delay(entry.attempts, settings)
            self.relay.events.emit(
                "retry_scheduled",
                queue_id=entry.queue_id,
                message_id=entry.message_id,
                recipients=entry.pending,
                attempt=entry.attempts,
                next_attempt=entry.next_attempt,
            )
