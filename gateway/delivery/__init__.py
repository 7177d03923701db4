"""Delivery to the next hop: Maildir, LMTP or SMTP behind one Protocol, and the router
that sends local-domain recipients to ``delivery.local`` and the rest to ``delivery.outbound``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.config import Config, DeliveryTarget
from gateway.delivery.client import ConnectionPool, Hop, HopReplies, NextHopError
from gateway.delivery.maildir import MaildirDeliverer
from gateway.smtp.replies import NEXT_HOP_UNAVAILABLE, Reply
from gateway.spool import Body

log = logging.getLogger(__name__)


class Deliverer(Protocol):
    hop: str

    async def deliver(
        self, sender: str, recipients: Sequence[str], body: Body
    ) -> Mapping[str, Reply]: ...

    async def close(self) -> None: ...


def unavailable(hop: str, why: str) -> Reply:
    """The 4xx a recipient gets when its hop gave no usable answer: retry, never lose."""
    return Reply(NEXT_HOP_UNAVAILABLE.code, NEXT_HOP_UNAVAILABLE.status, f"{hop}: {why}")


class NetworkDeliverer:
    """SMTP or LMTP next hop; a broken conversation is a temporary failure for everyone."""

    def __init__(
        self,
        target: DeliveryTarget,
        helo_name: str,
        timeout: float,
        pool: int,
        tls: str = "may",
        ca_file: str | None = None,
    ) -> None:
        lmtp = target.scheme == "lmtp"
        socket_path = str(target.path) if target.path is not None else None
        hop = Hop(target.host, target.port, lmtp, socket_path, "none" if lmtp else tls, ca_file)
        self.hop = str(hop)
        self._pool = ConnectionPool(hop, helo_name, timeout, pool)

    async def deliver(self, sender: str, recipients: Sequence[str], body: Body) -> HopReplies:
        try:
            return await self._pool.send(sender, recipients, body)
        except NextHopError as exc:
            return HopReplies.fromkeys(recipients, Reply(451, "4.4.1", str(exc)))
        except Exception as exc:
            log.exception("delivery to %s failed unexpectedly", self.hop)
            why = f"{type(exc).__name__}: {exc}"
            return HopReplies.fromkeys(recipients, unavailable(self.hop, why))

    async def close(self) -> None:
        await self._pool.close()


def make_deliverer(target: DeliveryTarget, config: Config, tls: str | None = None) -> Deliverer:
    """``tls`` is the hop's own level (``delivery.local_tls``/``outbound_tls``), if set."""
    if target.scheme == "maildir":
        assert target.path is not None
        return MaildirDeliverer(target.path)
    delivery = config.delivery
    return NetworkDeliverer(
        target,
        config.gateway.hostname,
        delivery.timeout,
        delivery.connections_per_host,
        tls or delivery.tls,
        str(delivery.tls_ca_file) if delivery.tls_ca_file is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one recipient's next hop said, and how the mail travelled there (``tls``:
    e.g. "TLSv1.3", "none: STARTTLS not offered"; None where no TLS policy applies)."""

    reply: Reply
    hop: str
    tls: str | None = None


class Router:
    """Splits recipients by domain and delivers each group to its next hop in parallel."""

    def __init__(self, config: Config) -> None:
        self._config = config
        delivery = config.delivery
        self.local = make_deliverer(delivery.local, config, delivery.local_tls)
        self.outbound = make_deliverer(delivery.outbound, config, delivery.outbound_tls)

    def use_config(self, config: Config) -> None:
        """A reload kept this router (same hops): route by the new config's domains."""
        self._config = config

    async def deliver(
        self, sender: str, recipients: Sequence[str], body: Body
    ) -> dict[str, Outcome]:
        """Every recipient gets an outcome: a hop that raises or leaves a recipient out
        gives that hop's recipients a 4xx, and the other hops' results still count."""
        groups: dict[int, tuple[Deliverer, list[str]]] = {}
        for recipient in recipients:
            deliverer = self.local if self._config.is_local(recipient) else self.outbound
            groups.setdefault(id(deliverer), (deliverer, []))[1].append(recipient)
        batches = list(groups.values())
        answers = await asyncio.gather(
            *(deliverer.deliver(sender, group, body) for deliverer, group in batches),
            return_exceptions=True,
        )
        outcomes: dict[str, Outcome] = {}
        for (deliverer, group), answer in zip(batches, answers, strict=True):
            if isinstance(answer, BaseException) and not isinstance(
                answer, Exception | asyncio.CancelledError
            ):
                raise answer
            if not isinstance(answer, Mapping):
                why = f"{type(answer).__name__}: {answer}"
                trace = answer if isinstance(answer, BaseException) else None
                log.error("delivery to %s failed: %s", deliverer.hop, why, exc_info=trace)
                answer = dict.fromkeys(group, unavailable(deliverer.hop, why))
            tls = answer.tls if isinstance(answer, HopReplies) else None
            for recipient in group:
                reply = answer.get(recipient)
                if not isinstance(reply, Reply):
                    reply = unavailable(deliverer.hop, "no reply for this recipient")
                    log.error("delivery to %s: no reply for %s", deliverer.hop, recipient)
                outcomes[recipient] = Outcome(reply, deliverer.hop, tls)
        return outcomes

    async def close(self) -> None:
        await asyncio.gather(self.local.close(), self.outbound.close(), return_exceptions=True)
