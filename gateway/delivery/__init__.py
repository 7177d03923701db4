"""Delivery to the next hop: Maildir, LMTP or SMTP behind one Protocol, and the router
that sends local-domain recipients to ``delivery.local`` and the rest to ``delivery.outbound``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.config import Config, DeliveryTarget
from gateway.delivery.client import ConnectionPool, Hop, NextHopError
from gateway.delivery.maildir import MaildirDeliverer
from gateway.smtp.replies import Reply
from gateway.spool import Body


class Deliverer(Protocol):
    hop: str

    async def deliver(
        self, sender: str, recipients: Sequence[str], body: Body
    ) -> dict[str, Reply]: ...

    async def close(self) -> None: ...


class NetworkDeliverer:
    """SMTP or LMTP next hop; a broken conversation is a temporary failure for everyone."""

    def __init__(self, target: DeliveryTarget, helo_name: str, timeout: float, pool: int) -> None:
        hop = Hop(target.host, target.port, lmtp=target.scheme == "lmtp")
        self.hop = str(hop)
        self._pool = ConnectionPool(hop, helo_name, timeout, pool)

    async def deliver(self, sender: str, recipients: Sequence[str], body: Body) -> dict[str, Reply]:
        try:
            return await self._pool.send(sender, recipients, body)
        except NextHopError as exc:
            return dict.fromkeys(recipients, Reply(451, "4.4.1", str(exc)))

    async def close(self) -> None:
        await self._pool.close()


def make_deliverer(target: DeliveryTarget, config: Config) -> Deliverer:
    if target.scheme == "maildir":
        assert target.path is not None
        return MaildirDeliverer(target.path)
    return NetworkDeliverer(
        target,
        config.gateway.hostname,
        config.delivery.timeout,
        config.delivery.connections_per_host,
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one recipient's next hop said."""

    reply: Reply
    hop: str


class Router:
    """Splits recipients by domain and delivers each group to its next hop in parallel."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.local = make_deliverer(config.delivery.local, config)
        self.outbound = make_deliverer(config.delivery.outbound, config)

    async def deliver(
        self, sender: str, recipients: Sequence[str], body: Body
    ) -> dict[str, Outcome]:
        groups: dict[int, tuple[Deliverer, list[str]]] = {}
        for recipient in recipients:
            deliverer = self.local if self._config.is_local(recipient) else self.outbound
            groups.setdefault(id(deliverer), (deliverer, []))[1].append(recipient)
        batches = list(groups.values())
        answers = await asyncio.gather(
            *(deliverer.deliver(sender, group, body) for deliverer, group in batches)
        )
        outcomes: dict[str, Outcome] = {}
        for (deliverer, _), answer in zip(batches, answers, strict=True):
            for recipient, reply in answer.items():
                outcomes[recipient] = Outcome(reply, deliverer.hop)
        return outcomes

    async def close(self) -> None:
        await asyncio.gather(self.local.close(), self.outbound.close())
