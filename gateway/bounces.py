"""Bounces: an RFC 3464 DSN to the sender, spooled durably like any other message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from gateway.dsn import FailedRecipient, build_dsn, is_bounce_worthy
from gateway.events.writer import EventLog
from gateway.spool import Body, QueueEntry, Spool, new_queue_id


class Bouncer:
    def __init__(self, hostname: str, spool: Spool, events: EventLog) -> None:
        self.hostname = hostname  # the Reporting-MTA; a reload may change it
        self.spool = spool
        self.events = events

    async def bounce(
        self,
        queue_id: str,
        sender: str,
        arrival: float,
        failures: Sequence[FailedRecipient],
        original_headers: bytes,
    ) -> None:
        """Spool a DSN to ``sender`` (never for bounces themselves: RFC 5321 6.1)."""
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
