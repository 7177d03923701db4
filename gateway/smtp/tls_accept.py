"""Implicit TLS (port 465 style) done by hand, so every socket counts from its first byte.

With ``create_server(ssl=...)`` asyncio runs the handshake before the session
exists: connections still handshaking were not counted against the per-client
limit (60 idle ones held a client's slots past 50), a handshake had no short
bound, and each failure printed a traceback. Here the acceptor takes a slot at
accept, hands the socket to TLS with a handshake timeout and the context in force
*now* (so SIGHUP's new certificate applies to the next connection), and turns a
failed handshake into one ``tls_failed`` event, after sending the TLS alert.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from gateway.smtp.server import GatewaySMTP, peer_host
from gateway.tls import AlertingSSLProtocol

HANDSHAKE_SECONDS = 10.0


class ImplicitTLSAcceptor(asyncio.Protocol):
    """The first protocol of an implicit-TLS connection; hands over to TLS at once."""

    def __init__(
        self,
        make_session: Callable[[], GatewaySMTP],
        context: Callable[[], ssl.SSLContext],
        handshake_seconds: float = HANDSHAKE_SECONDS,
    ) -> None:
        self._make_session = make_session
        self._context = context
        self._handshake_seconds = handshake_seconds

    def connection_made(self, transport: Any) -> None:
        loop = asyncio.get_running_loop()
        session = self._make_session()
        client = peer_host(transport.get_extra_info("peername"))
        refused = session.claim_slot(client)
        if refused is not None:
            session.event_handler.on_refused_connection(session, client, refused)
            transport.abort()  # a plain-text 421 would be noise to a TLS client
            return
        waiter = loop.create_future()
        tls = AlertingSSLProtocol(
            loop,
            session,
            self._context(),
            waiter,
            server_side=True,
            ssl_handshake_timeout=self._handshake_seconds,
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)
        watcher = loop.create_task(_watch_handshake(waiter, session, client))
        _WATCHERS.add(watcher)
        watcher.add_done_callback(_WATCHERS.discard)


_WATCHERS: set[asyncio.Task[Any]] = set()


async def _watch_handshake(waiter: asyncio.Future[Any], session: GatewaySMTP, client: str) -> None:
    """On failure, free the slot and record why; on success the session owns the slot."""
    try:
        await waiter
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if session.connected:
            return
        reason = "connection closed during the handshake"
    session.release_slot()
    session.event_handler.on_tls_failed_before_session(session, client, reason)
