"""aiosmtpd's protocol, hardened: streamed DATA, smuggling-proof line endings, limits.

aiosmtpd keeps DATA as a list of lines joined at the end (about 4x a message's
size in memory) and lets bare LF through inside a line. Here DATA is read in blocks,
checked by ``data.DataState`` and written to a BodyWriter (spilling to disk), and any
bare CR or LF refuses the message: the ``<LF>.<CR><LF>`` family of smuggling sequences
(CVE-2023-51764) never reaches a next hop that might read them as the end of data.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult

from gateway.smtp import replies
from gateway.smtp.addresses import plain_angle_address
from gateway.smtp.data import TERMINATOR, DataLimits, DataState
from gateway.smtp.replies import Reply

log = logging.getLogger(__name__)

# Enhanced status for aiosmtpd's own replies, which carry none (RFC 2034 wants one on
# every reply but the greeting and HELO/EHLO).
_DEFAULT_STATUS = {
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "421": "4.0.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}

_PENDING_AUTH = AuthResult(success=False, handled=True)
# aiosmtpd reports ``MAIL FROM:<>`` as the address "<>"; it stays so while in SMTP (its
# "MAIL first" checks test the sender for truth) and becomes "" in the MessageContext.
NULL_SENDER = "<>"
READ_BUFFER = 65536


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-listener protocol limits, copied from ``[smtp]`` when a session starts."""

    data: DataLimits  # what DATA may contain
    transaction_timeout: float
    max_errors: int


class ConnectionLimiter:
    """Counts open sessions, globally and per client address."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._open: Counter[str] = Counter()
        self._count = 0

    @property
    def active(self) -> int:
        return self._count

    def acquire(self, client: str) -> bool:
        if self._count >= self.total or self._open[client] >= self.per_client:
            return False
        self._open[client] += 1
        self._count += 1
        return True

    def release(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]
        self._count -= 1


class GatewaySMTP(SMTP):
    """One SMTP session. Policy lives in the handler; this class only speaks the protocol."""

    def __init__(
        self, handler: Any, *, limits: Limits, limiter: ConnectionLimiter, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        # aiosmtpd sizes the StreamReader at one line (1001 bytes), so reading pauses and
        # resumes the socket every two lines; read in 64 KiB and check lengths ourselves.
        self._stream_reader._limit = max(READ_BUFFER, limits.data.max_line_length + 1)
        self.limits = limits
        self._limiter = limiter
        self._plain_replies = False
        self._errors = 0
        self._pending_credentials: Any = None
        self.transaction_started: float | None = None

    # -- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """aiosmtpd starts a fresh Session after STARTTLS (RFC 3207 4.2); keep its id so
        the events of one connection stay together. Authentication is not carried over."""
        previous = self.session
        super().connection_made(transport)
        if previous is not None and self.session is not previous:
            self.session.session_id = getattr(previous, "session_id", None)
            self.session.user = None

    async def _handle_client(self) -> None:
        assert self.session is not None
        client = self.session.peer[0] if self.session.peer else "?"
        if not self._limiter.acquire(client):
            self._plain_replies = True
            await self.push(str(replies.TOO_MANY_CONNECTIONS.with_rule("smtp.max_connections")))
            self.event_handler.on_refused_connection(self, client)
            if self.transport is not None:
                self.transport.close()
            return
        try:
            self.event_handler.on_connect(self)
            await super()._handle_client()
        finally:
            self._limiter.release(client)
            self.event_handler.on_disconnect(self)

    # -- replies ---------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else str(status)
        code = text[:3]
        if not self._plain_replies and text[3:4] == " " and code[:1] in "245" and code != "220":
            rest = text[4:]
            first = rest.split(" ", 1)[0].split(".")
            if not (len(first) == 3 and all(p.isdigit() for p in first)):
                text = f"{code} {_DEFAULT_STATUS.get(code, code[0] + '.0.0')} {rest}"
        await super().push(text)
        if code[:1] == "5" and self.transport is not None:
            self._errors += 1
            if self._errors >= self.limits.max_errors:
                self.event_handler.on_protocol_error(self, "too many errors")
                await super().push(str(replies.TOO_MANY_ERRORS.with_rule("smtp.max_errors")))
                self.transport.close()

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_EHLO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    # -- AUTH: aiosmtpd calls the authenticator synchronously; ours must not block ----

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        self._pending_credentials = (mechanism, auth_data)
        return _PENDING_AUTH

    async def _finish_auth(self, result: AuthResult) -> AuthResult:
        if result is not _PENDING_AUTH:
            return result
        mechanism, credentials = self._pending_credentials
        self._pending_credentials = None
        return await self.event_handler.authenticate(self, mechanism, credentials)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_LOGIN(_, args))

    # -- transaction -----------------------------------------------------------------

    async def check_auth_needed(self, caller_method: str) -> bool:
        """aiosmtpd's own 530 names no rule; ours does."""
        assert self.session is not None
        if self._auth_required and not self.session.authenticated:
            await self.push(str(replies.AUTH_REQUIRED.with_rule("auth", "log in first")))
            return True
        return False

    def _set_rset_state(self) -> None:
        super()._set_rset_state()
        self.transaction_started = None

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()
        self.transaction_started = None

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(arg)
        if self.envelope is not None and self.envelope.mail_from is not None:
            self.transaction_started = self.loop.time()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        fast = plain_angle_address(arg)
        if fast is not None:
            return fast
        return super()._getaddr(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        writer = self.event_handler.begin_data(self)
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            deadline = (self.transaction_started or self.loop.time()) + (
                self.limits.transaction_timeout
            )
            async with asyncio.timeout_at(deadline):
                error, headers = await self._read_data(writer)
        except TimeoutError:
            writer.abort()
            self.event_handler.on_protocol_error(self, "transaction timeout during DATA")
            await self.push(str(replies.TRANSACTION_TIMEOUT.with_rule("smtp.transaction_timeout")))
            if self.transport is not None:
                self.transport.close()
            return
        except BaseException:
            writer.abort()
            self.event_handler.on_protocol_error(self, "connection lost during DATA")
            raise
        if error is not None:
            writer.abort()
            self.event_handler.on_data_refused(self, error)
            self._set_post_data_state()
            await self.push(str(error))
            return
        body = writer.finish(headers)
        try:
            status = await self.event_handler.end_data(self, body)
        finally:
            body.discard()
            self._set_post_data_state()
        await self.push(str(status))

    async def _read_data(self, writer: Any) -> tuple[Reply | None, bytes]:
        """Read DATA up to the lone dot; returns the first problem found (if any) and the
        header section. After a problem the rest is read and dropped, so the session
        stays in step and the client gets one clear answer."""
        state = DataState(self.limits.data)
        reader = self._reader
        while not state.done:
            try:
                block = await reader.readuntil(TERMINATOR)
            except asyncio.LimitOverrunError as overrun:
                block = await reader.readexactly(overrun.consumed)
            except asyncio.IncompleteReadError:
                raise ConnectionResetError("connection closed during DATA") from None
            content = state.feed(block)
            if content:
                writer.write(content)
        return state.error, bytes(state.headers)
