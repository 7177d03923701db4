"""A small SMTP/LMTP client that streams bodies and pipelines the envelope.

aiosmtplib (used by the benchmark's bare relay) speaks no LMTP, whose per-recipient
replies after DATA are what lets a before-queue proxy tell the sender the truth,
and its ``data()`` joins the body in memory two or three times over; a 20 MiB
message must instead flow from the spool file to the socket in chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from gateway.smtp.replies import Reply
from gateway.spool import Body

_DEFAULT_STATUS = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}


class NextHopError(Exception):
    """The conversation broke (refused, timed out, closed, nonsense): a temporary failure."""


class StaleConnection(NextHopError):
    """A reused connection failed before its first reply: nothing was accepted, so retry."""


@dataclass(frozen=True, slots=True)
class Hop:
    host: str
    port: int
    lmtp: bool

    def __str__(self) -> str:
        return f"{'lmtp' if self.lmtp else 'smtp'}://{self.host}:{self.port}"


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
        self._timer: asyncio.Timeout | None = None

    @classmethod
    async def open(cls, hop: Hop, helo_name: str, timeout: float) -> Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(hop.host, hop.port, limit=1 << 16), timeout
            )
        except (OSError, TimeoutError) as exc:
            raise NextHopError(f"cannot connect to {hop}: {exc or type(exc).__name__}") from None
        conn = cls(hop, reader, writer, timeout)
        try:
            async with conn._deadline():
                greeting = await conn._read_reply()
                if greeting.code != 220:
                    raise NextHopError(f"{hop} greeted with {greeting}")
                await conn._hello(helo_name)
                if "STARTTLS" in conn.extensions and not hop.lmtp:
                    await conn._starttls(helo_name)
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

    def _extend(self) -> None:
        """Start the current phase's clock again (the next command gets a full timeout)."""
        if self._timer is not None:
            self._timer.reschedule(asyncio.get_running_loop().time() + self._timeout)

    async def _hello(self, helo_name: str) -> None:
        verb = b"LHLO " if self.hop.lmtp else b"EHLO "
        reply, lines = await self._command_lines(verb + helo_name.encode())
        if reply.code != 250:
            raise NextHopError(f"{self.hop} refused {verb.decode().strip()}: {reply}")
        self.extensions = {line[4:].split(b" ")[0].decode().upper() for line in lines[1:]}

    async def _starttls(self, helo_name: str) -> None:
        """Opportunistic TLS, as Postfix's ``may`` level: encrypt when offered."""
        reply = await self._command(b"STARTTLS")
        if reply.code != 220:
            return
        self._extend()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            await asyncio.wait_for(self._writer.start_tls(context), self._timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise NextHopError(f"TLS with {self.hop} failed: {exc}") from None
        await self._hello(helo_name)

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

    async def send(self, sender: str, recipients: Sequence[str], body: Body) -> dict[str, Reply]:
        """One transaction; returns each recipient's reply. Raises NextHopError when broken."""
        self.broken = True  # until the transaction finishes cleanly
        async with self._deadline():
            return await self._transaction(sender, recipients, body)

    async def _transaction(
        self, sender: str, recipients: Sequence[str], body: Body
    ) -> dict[str, Reply]:
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
        mail_reply, rcpt_replies = replies[0], replies[1:]
        if not mail_reply.is_success:
            rcpt_replies = [mail_reply] * len(recipients)
        results = dict(zip(recipients, rcpt_replies, strict=True))
        accepted = [r for r, reply in results.items() if reply.is_success]
        if not pipelined and accepted:
            await self._send(b"DATA\r\n")
        data_reply = await self._read_reply() if (pipelined or accepted) else None
        if data_reply is not None and data_reply.code == 354 and not accepted:
            # A server that said 354 after refusing everyone: end the data, keep the refusals.
            await self._send(b".\r\n")
            await self._read_reply()
        elif data_reply is not None and data_reply.code == 354:
            await self._stream(body)
            self._extend()
            final = [await self._read_reply() for _ in (accepted if self.hop.lmtp else [0])]
            for index, recipient in enumerate(accepted):
                results[recipient] = final[index if self.hop.lmtp else 0]
        else:
            for recipient in accepted:
                results[recipient] = data_reply or mail_reply
            await self._command(b"RSET")
        self.broken = False
        self.transactions += 1
        self.last_used = time.monotonic()
        for recipient, reply in results.items():
            if reply.is_success and reply.code != 250:
                results[recipient] = Reply(451, "4.5.0", f"unexpected reply {reply}")
        return results

    async def _stream(self, body: Body) -> None:
        """Write the body from memory or disk, dot-stuffed, then the terminating dot."""
        ends_with_newline = True
        for chunk in body.line_chunks():
            self._extend()
            await self._send(dot_stuff(chunk))
            ends_with_newline = chunk.endswith(b"\r\n")
        await self._send(b".\r\n" if ends_with_newline else b"\r\n.\r\n")

    def usable(self, max_idle: float) -> bool:
        return (
            not self.broken
            and not self._reader.at_eof()
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
    Python relays fast (see BASELINES: +50% over a connection per message)."""

    MAX_IDLE = 30.0

    def __init__(self, hop: Hop, helo_name: str, timeout: float, size: int) -> None:
        self.hop = hop
        self._helo = helo_name
        self._timeout = timeout
        self._size = size
        self._idle: list[Connection] = []

    async def send(self, sender: str, recipients: Sequence[str], body: Body) -> dict[str, Reply]:
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
        conn = await Connection.open(self.hop, self._helo, self._timeout)
        return await self._send_on(conn, sender, recipients, body)

    async def _send_on(
        self, conn: Connection, sender: str, recipients: Sequence[str], body: Body
    ) -> dict[str, Reply]:
        try:
            results = await conn.send(sender, recipients, body)
        except BaseException:
            conn.abort()
            raise
        if len(self._idle) < self._size:
            self._idle.append(conn)
        else:
            await conn.quit()
        return results

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(conn.quit() for conn in idle))
