"""One client connection to the IMAP proxy: IMAP itself until login, then a byte pipe.

Before login the proxy answers CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN and
AUTHENTICATE PLAIN (with SASL-IR or a continuation) itself; the password is checked by
the gateway's one Authenticator (throttle, directory, effective state: MIC 7.1, MOST
13.3), so a locked mailbox never reaches the store. After login it opens the user's
session upstream (``upstream.py``) and copies bytes both ways, each direction waiting
for the other side to drain (a slow client never makes the proxy hold a mailbox in
memory). IDLE needs nothing special: the store's keep-alives flow through.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import ssl
import time
from typing import TYPE_CHECKING, Any

from gateway.events.errors import describe
from gateway.imap.pipe import Pipe
from gateway.imap.syntax import Command, LineTooLong, Malformed, read_command, read_line
from gateway.imap.upstream import Upstream, UpstreamError, open_session

if TYPE_CHECKING:
    from gateway.imap.server import ImapServices

MAX_BAD_COMMANDS = 10
HANDSHAKE_SECONDS = 10.0


class Closed(Exception):
    """End the session (the reason is for the event)."""


class ImapSession:
    def __init__(
        self,
        services: ImapServices,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        listener: str,
    ) -> None:
        self.services = services
        self.reader = reader
        self.writer = writer
        self.listener = listener  # "imap" (STARTTLS) or "imaps" (implicit TLS)
        self.session_id = secrets.token_hex(6)
        peer = writer.get_extra_info("peername") or ("unknown", 0)
        self.client: tuple[str, int] = (str(peer[0]), int(peer[1]))
        self.tls = writer.get_extra_info("ssl_object") is not None
        self.user: str | None = None
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.started = time.monotonic()
        self.end_reason = "closed"
        self._bad = 0
        self._task: asyncio.Task[Any] | None = None
        self._upstream: Upstream | None = None

    # -- events --------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        fields.setdefault("user", self.user)
        self.services.events.emit(
            event, session=self.session_id, client=self.client[0], listener=self.listener,
            **fields,
        )  # fmt: skip

    # -- output --------------------------------------------------------------------

    async def send(self, line: str) -> None:
        data = line.encode() + b"\r\n"
        self.bytes_to_client += len(data)
        self.writer.write(data)
        await self.writer.drain()

    def capabilities(self) -> str:
        config = self.services.config.imap
        assert config is not None
        found = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
        if not self.tls:
            found.append("STARTTLS")
        if not self.tls and config.require_tls_for_auth:
            found.append("LOGINDISABLED")
        else:
            found.append("AUTH=PLAIN")
        return " ".join(found)

    # -- life ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection; always records its end, never raises."""
        self._task = asyncio.current_task()
        self.emit("session_start", tls=self.tls or None)
        try:
            await self.send(f"* OK [CAPABILITY {self.capabilities()}] mailgate IMAP proxy ready")
            upstream = await self._before_login()
            if upstream is not None:
                await self._pipe(upstream)
        except Closed as why:
            self.end_reason = str(why)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.end_reason = "client closed the connection"
        except asyncio.CancelledError:
            self.end_reason = self.end_reason if self.end_reason != "closed" else "cancelled"
        except Exception as exc:  # a bug ends this session only
            self.services.log.exception("IMAP session %s failed", self.session_id)
            self.end_reason = f"internal error: {describe(exc)}"
        finally:
            self.writer.close()
            if self._upstream is not None:  # a client that left right after LOGIN
                self._upstream.writer.close()
            self.emit(
                "session_end",
                reason=self.end_reason,
                bytes_from_client=self.bytes_from_client,
                bytes_to_client=self.bytes_to_client,
                duration_s=round(time.monotonic() - self.started, 3),
            )

    def end(self, reason: str, farewell: str | None = None) -> None:
        """End the session from outside (a lock, shutdown): BYE, then close."""
        self.end_reason = reason
        if farewell and not self.writer.is_closing():
            data = f"* BYE {farewell}\r\n".encode()
            self.bytes_to_client += len(data)
            self.writer.write(data)
        if self._task is not None:
            self._task.cancel()

    # -- before login --------------------------------------------------------------

    async def _before_login(self) -> Upstream | None:
        config = self.services.config.imap
        assert config is not None
        deadline = asyncio.get_running_loop().time() + config.login_timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    command = await read_command(self.reader, self._continue, config.max_literal)
            except TimeoutError:
                await self.send("* BYE Autologout; no login in time")
                raise Closed("login timeout [imap.login_timeout]") from None
            except LineTooLong as exc:
                await self.send(f"* BAD {exc}")
                self.emit("protocol_error", reason=f"{exc} [imap]")
                raise Closed(f"{exc} [imap]") from None
            except Malformed as exc:
                await self.send(f"* BAD Malformed command: {exc}")
                self.emit("protocol_error", reason=f"malformed command: {exc} [imap]")
                raise Closed(f"malformed command [imap]: {exc}") from None
            handler = getattr(self, f"_cmd_{command.name.lower()}", None)
            if handler is None:
                await self._refuse(command, "Log in first" if command.name.isalpha() else "?")
                continue
            upstream = await handler(command)
            if upstream is not None:
                return upstream

    async def _continue(self) -> None:
        await self.send("+ Ready for literal data")

    async def _refuse(self, command: Command, text: str) -> None:
        self._bad += 1
        await self.send(f"{command.tag} BAD {text}")
        if self._bad >= MAX_BAD_COMMANDS:
            await self.send("* BYE Too many errors")
            raise Closed("too many errors [imap]")

    async def _cmd_capability(self, command: Command) -> None:
        await self.send(f"* CAPABILITY {self.capabilities()}")
        await self.send(f"{command.tag} OK Capability completed")

    async def _cmd_noop(self, command: Command) -> None:
        await self.send(f"{command.tag} OK NOOP completed")

    async def _cmd_logout(self, command: Command) -> None:
        await self.send("* BYE Logging out")
        await self.send(f"{command.tag} OK Logout completed")
        raise Closed("logout")

    async def _cmd_id(self, command: Command) -> None:
        await self.send('* ID ("name" "mailgate")')
        await self.send(f"{command.tag} OK ID completed")

    async def _cmd_starttls(self, command: Command) -> None:
        context = self.services.tls
        if self.tls or context is None:
            await self._refuse(command, "TLS is already active" if self.tls else "TLS not set up")
            return
        # Bytes pipelined behind STARTTLS arrived in plain text: an attacker's injection.
        if self.reader._buffer:  # asyncio has no public peek
            await self.send(f"{command.tag} BAD Data after STARTTLS")
            raise Closed("plain text after STARTTLS [imap]")
        await self.send(f"{command.tag} OK Begin TLS negotiation now")
        try:
            await self.writer.start_tls(context, ssl_handshake_timeout=HANDSHAKE_SECONDS)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self.emit("tls_failed", reason=f"{type(exc).__name__}: {exc}")
            raise Closed("TLS handshake failed") from None
        self.tls = True

    async def _cmd_login(self, command: Command) -> Upstream | None:
        if len(command.args) != 2 or "(" in command.args:
            await self._refuse(command, "LOGIN expects a user name and a password")
            return None
        return await self._login(command, command.args[0], command.args[1], "LOGIN")

    async def _cmd_authenticate(self, command: Command) -> Upstream | None:
        if not command.args or command.args[0].upper() != "PLAIN" or len(command.args) > 2:
            await self.send(f"{command.tag} NO [CANNOT] Only AUTHENTICATE PLAIN is offered")
            return None
        if len(command.args) == 2:  # SASL-IR (RFC 4959): "=" is an empty response
            response = "" if command.args[1] == "=" else command.args[1]
        else:
            await self.send("+ ")
            try:
                line = await read_line(self.reader)
            except LineTooLong:
                await self.send("* BAD line too long")
                raise Closed("endless AUTHENTICATE response [imap]") from None
            response = line.decode("ascii", "replace")
            if response == "*":
                await self.send(f"{command.tag} BAD AUTHENTICATE cancelled")
                return None
        try:
            decoded = base64.b64decode(response, validate=True).decode("utf-8")
            authzid, login, password = decoded.split("\x00")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            await self.send(f"{command.tag} BAD Invalid SASL PLAIN response")
            return None
        if authzid and authzid.lower() != login.lower():
            await self.send(f"{command.tag} NO [AUTHORIZATIONFAILED] Acting as another user"
                            " is not allowed [auth]")  # fmt: skip
            return None
        return await self._login(command, login, password, "PLAIN")

    async def _login(
        self, command: Command, login: str, password: str, mechanism: str
    ) -> Upstream | None:
        config = self.services.config.imap
        assert config is not None
        if config.require_tls_for_auth and not self.tls:
            await self.send(f"{command.tag} NO [PRIVACYREQUIRED] Use STARTTLS first"
                            " [imap.require_tls_for_auth]")  # fmt: skip
            return None

        def emit(event: str, **fields: Any) -> None:  # the authenticator records the login
            self.emit(event, mechanism=mechanism, **fields)

        result = await self.services.authenticator.login(login, password, self.client[0], emit)
        if result.mailbox is None:
            assert result.reply is not None
            await self.send(f"{command.tag} NO [AUTHORIZATIONFAILED] {result.reply.text}")
            return None
        mailbox = result.mailbox
        authenticator = self.services.authenticator
        refuse_key = (
            "imap.refuse_must_change" if config.refuse_must_change
            else "auth.refuse_must_change" if authenticator.refuse_must_change
            else None
        )  # fmt: skip
        if mailbox.must_change and refuse_key is not None:
            notice = authenticator.must_change_notice()
            self.emit("login_refused", user=mailbox.address, mechanism=mechanism,
                      reason=f"[{refuse_key}] {notice}")  # fmt: skip
            await self.send(f"{command.tag} NO [EXPIRED] Your {notice}; until then you cannot"
                            f" read mail [{refuse_key}]")  # fmt: skip
            return None
        try:
            upstream = await open_session(
                config.upstream.host,
                config.upstream.port,
                mailbox.address,
                config.upstream_master_user,
                self.services.master_password(),
                self.client,
                self.session_id,
                config.upstream_timeout,
            )
        except (UpstreamError, OSError) as exc:
            self.emit("upstream_unavailable", user=mailbox.address, reason=f"[imap] {exc}")
            await self.send(f"{command.tag} NO [UNAVAILABLE] The mail store is unavailable,"
                            " try again later [imap.upstream]")  # fmt: skip
            return None
        self.user = mailbox.address
        self._upstream = upstream
        if mailbox.must_change:
            notice = authenticator.must_change_notice()
            await self.send(f"* OK [ALERT] Your {notice}")
        await self.send(f"{command.tag} {upstream.login_reply.decode('utf-8', 'replace')}")
        return upstream

    # -- after login ---------------------------------------------------------------

    async def _pipe(self, upstream: Upstream) -> None:
        """Join the two connections (``pipe.py``) until either side ends."""
        pending_up = bytes(self.reader._buffer)  # commands pipelined behind LOGIN
        pending_down = bytes(upstream.reader._buffer)  # asyncio has no public take-all
        self.reader._buffer.clear()
        upstream.reader._buffer.clear()
        client_transport = self.writer.transport
        store_transport = upstream.writer.transport
        pipe = Pipe(client_transport, store_transport)  # type: ignore[arg-type]
        counts = pipe.start(pending_up, pending_down)
        for transport in (client_transport, store_transport):
            transport.resume_reading()  # a StreamReader may have paused it
        try:
            await asyncio.shield(counts.done)
            self.end_reason = f"closed by the {counts.ended_by}"
        finally:
            pipe.close()
            self.bytes_from_client += counts.from_client
            self.bytes_to_client += counts.to_client
