"""The IMAP proxy's listeners, its connection limits, and the watch over open sessions.

MIC 7.1: a locked mailbox cannot be accessed. The login check stops new sessions; the
watch (``watch_locks``) ends open ones: every ``imap.check_interval`` seconds it reads
the state of every logged-in mailbox from the directory (an operator's ``mailbox lock``
runs in another process, so only the database knows) and applies the same effective
state as a login, so a lock, a revocation or a deadline that passes ends the session
within seconds.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

from gateway.directory.lifecycle import effective_state
from gateway.directory.mailboxes import CAN_AUTHENTICATE
from gateway.events.errors import describe
from gateway.imap.session import ImapSession
from gateway.tls import following_context

if TYPE_CHECKING:
    from gateway.auth import Authenticator
    from gateway.config import Config, ListenAddress
    from gateway.directory.mailboxes import Directory
    from gateway.events.writer import EventLog

LINE_LIMIT = 8192  # bytes of one pre-login line (RFC 9051 recommends at least 8000)
HANDSHAKE_SECONDS = 10.0


class ImapServices(Protocol):
    log: logging.Logger

    @property
    def config(self) -> Config: ...

    @property
    def tls(self) -> ssl.SSLContext | None: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def authenticator(self) -> Authenticator: ...

    def master_password(self) -> str:
        """The store's master password, read from its file at each login (rotation)."""


class ImapProxy:
    def __init__(self, services: ImapServices) -> None:
        self.services = services
        self.sessions: set[ImapSession] = set()
        self.per_client: Counter[str] = Counter()
        self._servers: list[asyncio.Server] = []

    async def start(self) -> list[str]:
        """Bind ``imap.listen`` (and ``imap.listen_tls``); returns what was bound."""
        config = self.services.config.imap
        assert config is not None
        bound = [await self._listen("imap", config.listen)]
        if config.listen_tls is not None:
            bound.append(await self._listen("imaps", config.listen_tls, ssl=self._imaps_tls()))
        return bound

    async def _listen(self, name: str, address: ListenAddress, **tls: Any) -> str:
        if tls:
            tls["ssl_handshake_timeout"] = HANDSHAKE_SECONDS
        server = await asyncio.start_server(
            lambda r, w: self._accept(r, w, name),
            address.host, address.port, limit=LINE_LIMIT, reuse_address=True, **tls,
        )  # fmt: skip
        self._servers.append(server)
        return f"{name} {address}"

    def _imaps_tls(self) -> ssl.SSLContext:
        """Follows SIGHUP's renewed certificate (``following_context``)."""
        smtp = self.services.config.smtp
        assert smtp.tls_cert and smtp.tls_key, "check-config requires them for imap.listen_tls"
        return following_context(smtp.tls_cert, smtp.tls_key, lambda: self.services.tls)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener: str
    ) -> None:
        config = self.services.config.imap
        assert config is not None
        session = ImapSession(self.services, reader, writer, listener)
        client = session.client[0]
        if len(self.sessions) >= config.max_connections:
            refusal = "imap.max_connections"
        elif self.per_client[client] >= config.max_connections_per_client:
            refusal = "imap.max_connections_per_client"
        else:
            refusal = None
        if refusal is not None:
            writer.write(b"* BYE Too many connections, try again later\r\n")
            writer.close()
            session.emit("connection_refused", reason=f"[{refusal}]")
            return
        self.sessions.add(session)
        self.per_client[client] += 1
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.per_client[client] -= 1
            if self.per_client[client] <= 0:
                del self.per_client[client]

    async def watch_locks(self) -> None:
        """End sessions of mailboxes that may no longer log in (runs until cancelled)."""
        while True:
            config = self.services.config.imap
            await asyncio.sleep(config.check_interval if config else 2.0)
            try:
                await self.check_sessions()
            except Exception as exc:  # a directory hiccup must not stop the watch
                self.services.log.exception("IMAP session check failed")
                self.services.events.emit("internal_error", reason=f"imap watch: {describe(exc)}")

    async def check_sessions(self) -> int:
        """One pass of the watch; returns how many sessions it ended."""
        users = sorted({s.user for s in self.sessions if s.user})
        if not users:
            return 0
        found = await asyncio.to_thread(self.services.directory.get_many, users)
        ended = 0
        for session in list(self.sessions):
            if session.user is None:
                continue
            mailbox = found.get(session.user.lower())
            state, why = effective_state(mailbox) if mailbox else ("revoked", "mailbox removed")
            if state in CAN_AUTHENTICATE:
                continue
            session.end(
                f"mailbox {state}: {why or 'no reason recorded'} [auth]",
                "Mailbox locked, contact the operator",
            )
            ended += 1
        return ended

    async def close(self) -> None:
        """Stop listening and end every session (IMAP clients reconnect on their own)."""
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.end("shutdown", "Server shutting down")
        for server in self._servers:
            await server.wait_closed()
