"""What next hops said, sorted and recorded: the outcome events of every delivery attempt.

Shared by the end of DATA (``relay.py``) and the retry queue (``queue.py``), so both
write the same ``delivered``/``deferred``/``delivery_failed`` events.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import parse_host_port
from gateway.delivery import Outcome
from gateway.dsn import FailedRecipient
from gateway.events.writer import EventLog
from gateway.smtp.replies import Reply


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


def failure_of(recipient: str, outcome: Outcome, original: str | None = None) -> FailedRecipient:
    reply = outcome.reply
    return FailedRecipient(recipient, reply.status, str(reply), remote_mta(outcome.hop), original)


class OutcomeLog:
    """One event per (outcome, next hop, reply): delivered, deferred, delivery_failed."""

    def __init__(self, events: EventLog) -> None:
        self.events = events

    def hops(
        self,
        queue_id: str,
        message_id: str | None,
        sender: str,
        split: Split,
        **extra: object,
    ) -> None:
        for event, group in (
            ("delivered", split.delivered),
            ("deferred", split.deferred),
            ("delivery_failed", split.failed),
        ):
            by_hop: dict[tuple[str, Reply, str | None], list[str]] = {}
            for recipient, outcome in group.items():
                key = (outcome.hop, outcome.reply, outcome.tls)
                by_hop.setdefault(key, []).append(recipient)
            for (hop, reply, tls), recipients in by_hop.items():
                self.events.emit(
                    event,
                    queue_id=queue_id,
                    message_id=message_id,
                    sender=sender,
                    recipients=recipients,
                    next_hop=hop,
                    code=reply.code,
                    reason=None if reply.is_success else str(reply),
                    tls=tls,  # how the hop was reached: "TLSv1.3 verified", "none: ..."
                    **extra,
                )
