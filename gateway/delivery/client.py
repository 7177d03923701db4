"""A small SMTP/LMTP client that streams bodies and pipelines the envelope.

aiosmtplib (used by the benchmark's bare relay) speaks no LMTP, whose per-recipient
replies after DATA are what lets a before-queue proxy tell the sender the truth,
and its ``data()`` joins the body in memory two or three times over; a 20 MiB
message must instead flow from the spool file to the socket in chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from gateway.smtp.replies import Reply
from gateway.spool import Body

log = logging.getLogger(__name__)

_DEFAULT_STATUS = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}
# A body's last chunk shorter than this goes out in one write with the final dot.
_JOIN_BELOW = 64 * 1024


class NextHopError(Exception):
    """The conversation broke (refused, timed out, closed, nonsense): a temporary failure."""


class StaleConnection(NextHopError):
    """A reused connection failed before its first reply: nothing was accepted, so retry."""


class TlsFailed(NextHopError):
    """The hop said 220 to STARTTLS, then the handshake (or the EHLO inside TLS) failed."""


@dataclass(frozen=True, slots=True)
class Hop:
    """A next hop and how to talk to it; ``tls`` is the ``delivery.tls`` level (SMTP only)."""

    host: str
    port: int
    lmtp: bool
    socket_path: str | None = None  # LMTP over a unix socket (Dovecot's /run/dovecot/lmtp)
    tls: str = "may"
    ca_file: str | None = None  # for tls = "verify"; None: the system CA store

    def __str__(self) -> str:
        scheme = "lmtp" if self.lmtp else "smtp"
        if self.socket_path is not None:
            return f"{scheme}:unix:{self.socket_path}"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def uses_tls(self) -> bool:
        return not self.lmtp and self.tls != "none"


class HopReplies(dict[str, Reply]):
    """Each recipient's reply, plus how the connection was secured, so the events can say
    when a hop got mail in plain text (``None``: LMTP, where no TLS policy applies)."""

    tls: str | None = None


def tls_context(hop: Hop) -> ssl.SSLContext:
    """Postfix's smtp_tls_security_level: ``may`` takes what the default context negotiates
    unverified (anything beats plain text); ``encrypt`` wants TLS 1.2+ and checks nothing;
    ``verify`` wants TLS 1.2+ and a chain to ``ca_file`` (or the system store) naming the host.
    """
    if hop.tls == "verify":
        context = ssl.create_default_context(cafile=hop.ca_file)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if hop.tls != "may":
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def enhanced_status(word: str, code: int) -> bool:
    """True for an RFC 3463 status (class.subject.detail) matching the reply's class."""
    parts = word.split(".")
    return (
        len(parts) == 3
        and parts[0] == str(code // 100)
        and parts[0] in ("2", "4", "5")
        and all(p.isdigit() and 1 <= len(p) <= 3 for p in parts[1:])
    )


def parse_reply(lines: list[bytes]) -> Reply:
    """Turn raw reply lines into a Reply, taking the enhanced status if the server sent one."""
    code = int(lines[0][:3])
    status = _DEFAULT_STATUS.get(code // 100, f"{code // 100}.0.0")
    texts = []
    for index, line in enumerate(lines):
        first, _, rest = line[4:].decode("utf-8", "replace").strip().partition(" ")
        if enhanced_status(first, code):
            if index == 0:
                status = first
            texts.append(rest)
        else:
            texts.append(f"{first} {rest}".strip())
    return Reply(code, status, " ".join(t for t in texts if t))


def dot_stuff(chunk: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency for a chunk that starts at a line start."""
    stuffed = chunk.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed[:1] == b"." else stuffed


def _rank(reply: Reply) -> int:
    """Which of two replies to one address wins: delivered, then retry, then refused."""
    return 0 if reply.is_success else 1 if reply.is_temporary else 2


class Connection:
    """One open session with a next hop, ready for MAIL after ``open``."""

    def __init__(
        self,
        hop: Hop,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout: float,
    ) -> None:
        self.hop = hop
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self.extensions: set[str] = set()
        self.last_used = time.monotonic()
        self.broken = False
        self.transactions = 0
        self.tls: str | None = None if hop.lmtp else "none (delivery.tls = none)"
        self._timer: asyncio.Timeout | None = None

    @classmethod
    async def open(
        cls,
        hop: Hop,
        helo_name: str,
        timeout: float,
        context: ssl.SSLContext | None = None,
        plain_because: str | None = None,
    ) -> Connection:
        """Connect, greet and apply the TLS policy; ``plain_because`` skips STARTTLS
        (a ``may`` hop whose handshake failed) and says why."""
        try:
            if hop.socket_path is not None:
                connecting = asyncio.open_unix_connection(hop.socket_path, limit=1 << 16)
            else:
                connecting = asyncio.open_connection(hop.host, hop.port, limit=1 << 16)
            reader, writer = await asyncio.wait_for(connecting, timeout)
        except (OSError, TimeoutError) as exc:
            raise NextHopError(
                f"cannot connect to {hop}: {str(exc) or type(exc).__name__}"
            ) from None
        conn = cls(hop, reader, writer, timeout)
        try:
            async with conn._deadline():
                greeting = await conn._read_reply()
                if greeting.code != 220:
                    raise NextHopError(f"{hop} greeted with {greeting}")
                await conn._hello(helo_name)
                if hop.uses_tls:
                    await conn._secure(helo_name, context, plain_because)
        except BaseException:
            conn.abort()
            raise
        return conn

    @contextlib.asynccontextmanager
    async def _deadline(self) -> AsyncIterator[None]:
        """One timer per phase (greeting, envelope, each body chunk, final replies) rather
        than per read: a timer per await cost a tenth of the relay's CPU."""
        try:
            async with asyncio.timeout(self._timeout) as timer:
                self._timer = timer
                yield
        except TimeoutError:
            raise NextHopError(f"{self.hop} did not answer within {self._timeout:g}s") from None
        finally:
            self._timer = None

    def _extend(self, periods: float = 1.0) -> None:
        """Start the current phase's clock again (the next command gets a full timeout)."""
        if self._timer is not None:
            deadline = asyncio.get_running_loop().time() + periods * self._timeout
            self._timer.reschedule(deadline)

    async def _hello(self, helo_name: str) -> None:
        verb = b"LHLO " if self.hop.lmtp else b"EHLO "
        reply, lines = await self._command_lines(verb + helo_name.encode())
        if reply.code != 250:
            raise NextHopError(f"{self.hop} refused {verb.decode().strip()}: {reply}")
        # latin-1 never fails: a hop's odd bytes in an extension it offers must not stop mail.
        self.extensions = {line[4:].split(b" ")[0].decode("latin-1").upper() for line in lines[1:]}

    async def _secure(
        self, helo_name: str, context: ssl.SSLContext | None, plain_because: str | None
    ) -> None:
        """The hop's ``delivery.tls`` level: ``may`` goes plain when TLS is not to be had,
        ``encrypt``/``verify`` make that a temporary failure (never plain text)."""
        level = self.hop.tls
        required = level != "may"
        if plain_because is not None and not required:
            self.tls = f"none: {plain_because}"
            return
        if "STARTTLS" not in self.extensions:
            if required:
                raise NextHopError(f"{self.hop} offers no STARTTLS; delivery.tls = {level}")
            self.tls = "none: STARTTLS not offered"
            return
        reply = await self._command(b"STARTTLS")
        if reply.code != 220:
            if required:
                raise NextHopError(f"{self.hop} refused STARTTLS ({reply}); delivery.tls = {level}")
            self.tls = f"none: STARTTLS refused ({reply})"
            return
        if self._unasked():
            # Bytes after the 220 were sent in plain text before TLS: never read them as
            # replies inside the encrypted session (the STARTTLS injection of CVE-2011-0411).
            raise NextHopError(f"{self.hop} sent data before the TLS handshake")
        context = context or tls_context(self.hop)
        self._extend(2)  # the handshake's own timeout below fires first
        try:
            await asyncio.wait_for(
                self._writer.start_tls(context, server_hostname=self.hop.host or None),
                self._timeout,
            )
            self._extend()
            await self._hello(helo_name)
        except (OSError, TimeoutError, NextHopError) as exc:
            raise TlsFailed(
                f"TLS with {self.hop} failed: {str(exc) or type(exc).__name__}"
            ) from None
        ssl_object = self._writer.get_extra_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else "TLS"
        self.tls = f"{version}{' verified' if level == 'verify' else ''}"

    async def _read_reply_lines(self) -> list[bytes]:
        lines = []
        try:
            while True:
                line = await self._reader.readline()
                if not line.endswith(b"\n"):
                    raise NextHopError(f"{self.hop} closed the connection")
                line = line.rstrip(b"\r\n")
                if len(line) < 3 or not line[:3].isdigit():
                    raise NextHopError(f"{self.hop} sent a malformed reply")
                lines.append(line)
                if line[3:4] != b"-":
                    return lines
        except (OSError, ValueError) as exc:
            raise NextHopError(f"{self.hop}: {exc}") from None

    async def _read_reply(self) -> Reply:
        return parse_reply(await self._read_reply_lines())

    async def _command_lines(self, line: bytes) -> tuple[Reply, list[bytes]]:
        await self._send(line + b"\r\n")
        lines = await self._read_reply_lines()
        return parse_reply(lines), lines

    async def _command(self, line: bytes) -> Reply:
        reply, _ = await self._command_lines(line)
        return reply

    async def _send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise NextHopError(f"{self.hop}: {exc}") from None

    def _unasked(self) -> bytes:
        """Bytes the hop sent that no command asked for (StreamReader has no public peek)."""
        return bytes(getattr(self._reader, "_buffer", b""))

    def _mail_params(self, sender: str, recipients: Sequence[str], body: Body) -> bytes:
        params = []
        if "8BITMIME" in self.extensions:
            params.append(b" BODY=8BITMIME")
        if "SIZE" in self.extensions:
            params.append(b" SIZE=%d" % body.size)
        needs_utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        if needs_utf8 and "SMTPUTF8" in self.extensions:
            params.append(b" SMTPUTF8")
        return b"".join(params)

    async def send(self, sender: str, recipients: Sequence[str], body: Body) -> HopReplies:
        """One transaction; returns each recipient's reply. Raises NextHopError when broken."""
        self.broken = True  # until the transaction finishes cleanly
        async with self._deadline():
            per_command = await self._transaction(sender, recipients, body)
        results = HopReplies()
        for recipient, reply in zip(recipients, per_command, strict=True):
            if reply.is_success and reply.code != 250:
                reply = Reply(451, "4.5.0", f"unexpected reply {reply}")
            # A duplicated address: it has the message if any of its RCPT commands got it.
            if recipient not in results or _rank(reply) < _rank(results[recipient]):
                results[recipient] = reply
        results.tls = self.tls
        return results

    async def _transaction(self, sender: str, recipients: Sequence[str], body: Body) -> list[Reply]:
        """The reply to each RCPT command, by position: LMTP (RFC 2033 4.2) answers once per
        accepted RCPT *command*, so a duplicated address is two commands and two replies."""
        params = self._mail_params(sender, recipients, body)
        envelope = [b"MAIL FROM:<%s>%s\r\n" % (sender.encode(), params)]
        envelope += [b"RCPT TO:<%s>\r\n" % r.encode() for r in recipients]
        pipelined = "PIPELINING" in self.extensions
        if pipelined:
            await self._send(b"".join(envelope) + b"DATA\r\n")
        replies: list[Reply] = []
        for line in envelope:
            if not pipelined:
                await self._send(line)
            try:
                reply = await self._read_reply()
            except NextHopError as exc:
                if self.transactions and not replies:
                    raise StaleConnection(str(exc)) from None
                raise
            if reply.code == 421 and self.transactions and not replies:
                # A pooled connection the server has since closed (idle timeout): its
                # 421 was waiting in the buffer. Nothing was accepted, so retry elsewhere.
                raise StaleConnection(f"{self.hop} closed the idle connection: {reply}")
            replies.append(reply)
        mail_reply, per_command = replies[0], replies[1:]
        if not mail_reply.is_success:
            per_command = [mail_reply] * len(recipients)
        accepted = [index for index, reply in enumerate(per_command) if reply.is_success]
        if not pipelined and accepted:
            await self._send(b"DATA\r\n")
        data_reply = await self._read_reply() if (pipelined or accepted) else None
        clean = True
        if data_reply is not None and data_reply.code == 354 and not accepted:
            # A server that said 354 after refusing everyone: end the data, keep the refusals.
            await self._send(b".\r\n")
            await self._read_reply()
        elif data_reply is not None and data_reply.code == 354:
            await self._stream(body)
            self._extend()
            final = [await self._read_reply() for _ in (accepted if self.hop.lmtp else [0])]
            for position, index in enumerate(accepted):
                per_command[index] = final[position if self.hop.lmtp else 0]
        else:
            if data_reply is not None and data_reply.is_success:
                raise NextHopError(f"{self.hop} answered DATA with {data_reply}: out of step")
            for index in accepted:
                per_command[index] = data_reply or mail_reply
            clean = (await self._command(b"RSET")).code == 250
        unasked = self._unasked()
        if unasked[:3] == b"421":
            clean = False  # the hop is closing the session (RFC 5321 3.8); the replies stand
        elif unasked:
            # More replies than commands: which reply answered which command is now a guess,
            # so no 250 can be trusted; drop the connection and let every recipient retry.
            raise NextHopError(f"{self.hop} sent {len(unasked)} bytes no command asked for")
        self.broken = not clean
        self.transactions += 1
        self.last_used = time.monotonic()
        return per_command

    async def _stream(self, body: Body) -> None:
        """Write the body from memory or disk, dot-stuffed, then the terminating dot: with
        the last chunk when that is small (one write and one segment for most mail)."""
        last = b""
        for chunk in body.line_chunks():
            self._extend()
            if last:
                await self._send(last)
            last = dot_stuff(chunk)
        end = b".\r\n" if not last or last.endswith(b"\r\n") else b"\r\n.\r\n"
        if len(last) >= _JOIN_BELOW:  # a copy would cost more than a second write
            await self._send(last)
            last = b""
        await self._send(last + end)

    def usable(self, max_idle: float) -> bool:
        return (
            not self.broken
            and not self._reader.at_eof()
            and not self._unasked()
            and time.monotonic() - self.last_used < max_idle
        )

    async def quit(self) -> None:
        try:
            if not self.broken:
                self._writer.write(b"QUIT\r\n")
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2)
        except (OSError, TimeoutError):
            pass

    def abort(self) -> None:
        self.broken = True
        self._writer.close()


class ConnectionPool:
    """Keeps up to ``size`` idle connections per hop; a persistent pool is what makes
    Python relays fast (see BASELINES: +50% over a connection per message).

    After ``close`` (a reload replaced the router) deliveries still in flight finish and
    quit their connection; a late ``send`` opens a fresh one and quits it too."""

    MAX_IDLE = 30.0
    PLAIN_FOR = 600.0  # seconds a ``may`` hop whose TLS handshake failed gets plain text

    def __init__(self, hop: Hop, helo_name: str, timeout: float, size: int) -> None:
        self.hop = hop
        self._helo = helo_name
        self._timeout = timeout
        self._size = size
        self._idle: list[Connection] = []
        self.closed = False
        self._context = tls_context(hop) if hop.uses_tls else None
        self._plain_until = 0.0
        self._plain_because = ""

    async def send(self, sender: str, recipients: Sequence[str], body: Body) -> HopReplies:
        """Deliver over a pooled connection; a stale pooled one is retried once on a new one."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable(self.MAX_IDLE):
                conn.abort()
                continue
            try:
                return await self._send_on(conn, sender, recipients, body)
            except StaleConnection:
                continue
        conn = await self._open()
        return await self._send_on(conn, sender, recipients, body)

    async def _open(self) -> Connection:
        """A new connection; under ``may`` a failed handshake is retried once in plain text
        on a new connection and remembered, as Postfix does, so such a hop still gets mail."""
        plain = self._plain_because if time.monotonic() < self._plain_until else None
        try:
            return await Connection.open(self.hop, self._helo, self._timeout, self._context, plain)
        except TlsFailed as exc:
            if self.hop.tls != "may":
                raise
            self._plain_because = f"{exc}; plain text for {self.PLAIN_FOR / 60:g} min"
            self._plain_until = time.monotonic() + self.PLAIN_FOR
            log.warning("%s (delivery.tls = may)", self._plain_because)
            return await Connection.open(
                self.hop, self._helo, self._timeout, self._context, self._plain_because
            )

    async def _send_on(
        self, conn: Connection, sender: str, recipients: Sequence[str], body: Body
    ) -> HopReplies:
        try:
            results = await conn.send(sender, recipients, body)
        except BaseException:
            conn.abort()
            raise
        if self.closed or conn.broken or len(self._idle) >= self._size:
            await conn.quit()
        else:
            self._idle.append(conn)
        return results

    async def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(conn.quit() for conn in idle))
