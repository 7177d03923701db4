"""aiosmtpd's protocol, hardened: streamed DATA, smuggling-proof line endings, limits,
an idle timer that measures idle time only, and a relay that outlives its client.

aiosmtpd keeps DATA as a list of lines joined at the end (about 4x a message's
size in memory) and lets bare LF through inside a line. Here DATA is read in blocks,
checked by ``data.DataState`` and written to a BodyWriter (spilling to disk), and any
bare CR or LF refuses the message: the ``<LF>.<CR><LF>`` family of smuggling sequences
(CVE-2023-51764) never reaches a next hop that might read them as the end of data.

Written against aiosmtpd 1.4.6 (pinned in pyproject.toml). The internals of
``aiosmtpd.smtp.SMTP`` this class relies on or overrides, to re-check on an upgrade:

* ``_create_session`` (our typed GatewaySession), ``connection_made`` (session id kept
  across STARTTLS), ``_handle_client`` (connection limits, start/end events);
* ``_reset_timeout``/``_timeout_cb``/``_timeout_duration``/``_timeout_handle``: aiosmtpd
  restarts the idle timer only on command lines; we also count DATA blocks as activity
  and never time out while a relay runs;
* ``_reader`` (read DATA in blocks; its ``_limit`` raised to 64 KiB), ``_writer``,
  ``transport``, ``_original_transport``/``_tls_protocol`` (STARTTLS), ``_set_rset_state``
  and ``_set_post_data_state`` (transaction clock);
* ``push`` (enhanced status codes, error budget, rule tags), ``smtp_HELO``/``smtp_EHLO``,
  ``smtp_MAIL`` (SIZE refusal with its rule), ``smtp_DATA`` (entirely ours),
  ``smtp_STARTTLS`` (handshake bounded, failure recorded), ``_getaddr`` (fast path);
* AUTH: ``_authenticate`` is called synchronously by ``auth_PLAIN``/``auth_LOGIN``; we park
  the credentials and finish asynchronously in ``_finish_auth``; ``challenge_auth`` is
  replaced to bound the client's line; ``_auth_required``/``check_auth_needed``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, TLSSetupException

from gateway.directory.addresses import fold_vietnamese
from gateway.smtp import replies
from gateway.smtp.addresses import plain_angle_address
from gateway.smtp.data import TERMINATOR, DataLimits, DataState
from gateway.smtp.replies import Reply
from gateway.smtp.session import GatewaySession
from gateway.tls import AlertingSSLProtocol

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
# RFC 4954 4: an AUTH exchange line may be up to 12288 octets.
AUTH_LINE_LIMIT = 12288
STARTTLS_HANDSHAKE_SECONDS = 10.0
_RULE_TAG = re.compile(r"\[[a-z_.]+\]")
# aiosmtpd quotes the client's unknown command back ('command "X" not recognized'): after
# an AUTH exchange ends early that "command" may be a base64 password. Never echo it.
_QUOTED_CLIENT_TEXT = re.compile(r'"[^"]*"')


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-listener protocol limits, copied from ``[smtp]`` when a session starts."""

    data: DataLimits  # what DATA may contain
    transaction_timeout: float
    max_errors: int


class ConnectionLimiter:
    """Counts open sessions on one listener, within the gateway-wide limits of ``parent``.

    Each listener has its own cap so that a flood on one (inbound) cannot lock mail
    clients out of another (submission); the parent holds the global cap and the
    per-client cap, which count a client's sessions on every listener together.
    """

    def __init__(
        self,
        total: int,
        per_client: int | None = None,
        *,
        total_key: str,
        parent: ConnectionLimiter | None = None,
    ) -> None:
        self.total = total
        self.per_client = per_client
        self.total_key = total_key
        self.parent = parent
        self._open: Counter[str] = Counter()
        self._count = 0
        # Told the new count at every change (smtp.processes: the balancing Board).
        self.on_change: Callable[[int], None] | None = None

    @property
    def active(self) -> int:
        return self._count

    def refusal(self, client: str) -> str | None:
        """The config key of the limit ``client`` would break, or None."""
        if self._count >= self.total:
            return self.total_key
        if self.per_client is not None and self._open[client] >= self.per_client:
            return "smtp.max_connections_per_client"
        return self.parent.refusal(client) if self.parent else None

    def acquire(self, client: str) -> str | None:
        """Take a slot; returns None, or the key of the limit that refused it."""
        refused = self.refusal(client)
        if refused is None:
            self._take(client)
        return refused

    def _take(self, client: str) -> None:
        self._open[client] += 1
        self._count += 1
        if self.on_change is not None:
            self.on_change(self._count)
        if self.parent:
            self.parent._take(client)

    def release(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]
        self._count -= 1
        if self.on_change is not None:
            self.on_change(self._count)
        if self.parent:
            self.parent.release(client)


def peer_host(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


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
        self._slot_client: str | None = None  # set once a connection slot is held
        self._plain_replies = False
        self._errors = 0
        self._pending_credentials: Any = None
        self.transaction_started: float | None = None
        self._last_activity = self.loop.time()
        self.relaying = False  # a relay is running for this session: it is not idle
        self.connected = False  # connection_made was called (after TLS, if implicit)
        self._utf8_reply = False  # the reply to DATA goes out after the envelope is reset

    session: GatewaySession | None  # type: ignore[assignment]

    def _create_session(self) -> GatewaySession:
        return GatewaySession(self.loop)

    # -- connection ------------------------------------------------------------------

    def claim_slot(self, client: str) -> str | None:
        """Count this connection now (the implicit-TLS acceptor does it before the
        handshake); returns the key of the limit that refused it, or None."""
        refused = self._limiter.acquire(client)
        if refused is None:
            self._slot_client = client
        return refused

    def release_slot(self) -> None:
        if self._slot_client is not None:
            self._limiter.release(self._slot_client)
            self._slot_client = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """aiosmtpd starts a fresh Session after STARTTLS (RFC 3207 4.2); keep its id so
        the events of one connection stay together. Authentication is not carried over."""
        previous = self.session
        self.connected = True
        super().connection_made(transport)
        if previous is not None and self.session is not previous:
            assert self.session is not None
            self.session.carry_over(previous)

    async def _handle_client(self) -> None:
        assert self.session is not None
        client = peer_host(self.session.peer)
        if self._slot_client is None:
            refused = self.claim_slot(client)
            if refused is not None:
                self._plain_replies = True
                await self.push(str(replies.TOO_MANY_CONNECTIONS.with_rule(refused)))
                self.event_handler.on_refused_connection(self, client, refused)
                if self.transport is not None:
                    self.transport.close()
                return
        try:
            self.event_handler.on_connect(self)
            await super()._handle_client()
        finally:
            self.release_slot()
            self.event_handler.on_disconnect(self)

    def connection_lost(self, error: Exception | None) -> None:
        """Free the slot here too: a client that closes right after connecting (or after
        the TLS handshake) can have ``_handle_client`` cancelled before it ever runs, and
        then its ``finally`` never does."""
        super().connection_lost(error)
        self.release_slot()

    def eof_received(self) -> bool | None:
        """aiosmtpd cancels the session on EOF but keeps the socket half open until the
        idle timer; nothing more will be read, so close it now."""
        super().eof_received()
        if self.transport is not None:
            self.transport.close()
        return False

    # -- idle timer: idle time only ----------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Bytes arriving are activity, even mid-line (a steady DATA upload)."""
        self._last_activity = self.loop.time()
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        self._last_activity = self.loop.time()
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        """aiosmtpd's timer fires ``idle_timeout`` after the last command line. A client
        uploading DATA, or waiting for a slow next hop, is not idle: look again later."""
        if self.transport is None:  # the connection is gone; nothing to time out
            return
        if self.relaying:
            super()._reset_timeout()
            return
        idle = self.loop.time() - self._last_activity
        if idle < self._timeout_duration:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._timeout_handle = self.loop.call_later(
                self._timeout_duration - idle, self._timeout_cb
            )
            return
        self.event_handler.on_protocol_error(self, "idle timeout [smtp.idle_timeout]")
        super()._timeout_cb()

    # -- replies ---------------------------------------------------------------------

    async def push(self, status: Any) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else str(status)
        code = text[:3]
        if not self._plain_replies and text[3:4] == " " and code[:1] in "245" and code != "220":
            rest = text[4:]
            first = rest.split(" ", 1)[0].split(".")
            if not (len(first) == 3 and all(p.isdigit() for p in first)):
                text = f"{code} {_DEFAULT_STATUS.get(code, code[0] + '.0.0')} {rest}"
            if code[:1] in "45" and not _RULE_TAG.search(text):
                # aiosmtpd's own refusals (syntax, sequence): name the rule and record it.
                text = _QUOTED_CLIENT_TEXT.sub("(not shown)", text) + " [smtp.protocol]"
                self.event_handler.on_command_refused(self, text)
        utf8 = self._utf8_reply or (self.envelope is not None and self.envelope.smtp_utf8)
        if not text.isascii() and not utf8:
            # Reply text is ASCII unless the client asked for SMTPUTF8 (RFC 6531 3.7.4.2):
            # "TỐI MẬT stamp in attachment bao-cáo.docx" becomes "TOI MAT ... bao-cao.docx".
            text = fold_vietnamese(text)
        await super().push(text)
        if code[:1] == "5" and self.transport is not None:
            self._errors += 1
            if self._errors >= self.limits.max_errors:
                self.event_handler.on_protocol_error(self, "too many errors [smtp.max_errors]")
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

    async def handle_exception(self, error: Exception) -> str:
        """A failed STARTTLS handshake is the client's problem, not a bug: one event, no
        traceback, and the connection closes (aiosmtpd does that for TLSSetupException)."""
        if isinstance(error, TLSSetupException):
            cause = error.__cause__ or error
            self.event_handler.on_tls_failed(self, f"{type(cause).__name__}: {cause}")
            return str(replies.TLS_FAILED)
        return await super().handle_exception(error)

    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's STARTTLS, with a bounded handshake and a TLS alert on failure (it
        uses asyncio's SSLProtocol, which drops the alert and waits for ever)."""
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 TLS not available")
            return
        await self.push("220 Ready to start TLS")
        waiter = self.loop.create_future()
        self._tls_protocol = AlertingSSLProtocol(
            self.loop,
            self,
            self.tls_context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=STARTTLS_HANDSHAKE_SECONDS,
        )
        self._original_transport = self.transport
        assert self._original_transport is not None
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        try:
            await waiter
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error

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

    async def challenge_auth(
        self,
        challenge: str | bytes,
        encode_to_b64: bool = True,
        log_client_response: bool = False,
    ) -> Any:
        """aiosmtpd's, with the client's answer bounded (RFC 4954: 12288 octets): a 2 MB
        "user name" gets a clear 500 and an event instead of a 451 and a traceback."""
        data = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (base64.b64encode(data) if encode_to_b64 else data))
        line = await self._read_bounded_line(AUTH_LINE_LIMIT)
        if line is None:
            reply = replies.AUTH_LINE_TOO_LONG.with_rule("auth", f"over {AUTH_LINE_LIMIT} bytes")
            self.event_handler.on_auth_refused(self, reply)
            await self.push(str(reply))
            return MISSING
        blob = line.strip()
        if blob == b"*":
            await self.push("501 5.7.0 Auth aborted [auth]")
            return MISSING
        try:
            return base64.b64decode(blob, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 Can't decode base64 [auth]")
            return MISSING

    async def _read_bounded_line(self, limit: int) -> bytes | None:
        """One line of at most ``limit`` bytes, or None after reading past the whole
        over-long line (so the session stays in step)."""
        reader = self._reader
        too_long = False
        taken = 0
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as overrun:
                taken += overrun.consumed
                await reader.readexactly(overrun.consumed)
                too_long = True
                continue
            except asyncio.IncompleteReadError:
                raise ConnectionResetError("connection closed during AUTH") from None
            taken += len(line)
            if too_long or taken > limit:
                return None
            return line

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
        if arg and await self._refuse_declared_size(arg):
            return
        await super().smtp_MAIL(arg)
        if self.envelope is not None and self.envelope.mail_from is not None:
            self.transaction_started = self.loop.time()

    async def _refuse_declared_size(self, arg: str) -> bool:
        """RFC 1870: a SIZE= over our limit is refused at MAIL, naming the limit's key."""
        limit = self.data_size_limit
        for param in arg.split()[1:]:
            name, _, value = param.partition("=")
            if name.upper() == "SIZE" and value.isdigit() and limit and int(value) > limit:
                if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
                    return True
                reply = replies.MESSAGE_TOO_BIG.with_rule(
                    "smtp.max_message_size", f"declared SIZE {value} > {limit} bytes"
                )
                self.event_handler.on_mail_refused(self, arg, reply)
                await self.push(str(reply))
                return True
        return False

    async def smtp_RCPT(self, arg: str | None) -> None:
        if self._transaction_expired():
            await self._close_expired("RCPT")
            return
        await super().smtp_RCPT(arg)

    def _transaction_expired(self) -> bool:
        started = self.transaction_started
        return started is not None and self.loop.time() - started > self.limits.transaction_timeout

    async def _close_expired(self, during: str) -> None:
        self.event_handler.on_protocol_error(
            self, f"transaction timeout during {during} [smtp.transaction_timeout]"
        )
        await self.push(str(replies.TRANSACTION_TIMEOUT.with_rule("smtp.transaction_timeout")))
        if self.transport is not None:
            self.transport.close()

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
        if self._transaction_expired():
            await self._close_expired("DATA")
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
            await self._close_expired("DATA")
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
        self.relaying = True
        self._utf8_reply = self.envelope.smtp_utf8
        try:
            status = await self.event_handler.end_data(self, writer, headers)
        finally:
            self.relaying = False
            self._set_post_data_state()
            if self.transport is not None:
                self._reset_timeout()  # the relay's time was not the client's idle time
        try:
            await self.push(str(status))
        finally:
            self._utf8_reply = False

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
                if writer.needs_flush:
                    await writer.flush()
        return state.error, bytes(state.headers)
