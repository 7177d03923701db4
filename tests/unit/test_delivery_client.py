"""delivery/client.py and delivery/maildir.py against a tiny scripted SMTP/LMTP server."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.config import DeliveryTarget
from gateway.delivery import NetworkDeliverer
from gateway.delivery.client import (
    Connection,
    ConnectionPool,
    Hop,
    HopReplies,
    NextHopError,
    dot_stuff,
    parse_reply,
)
from gateway.delivery.maildir import MaildirDeliverer
from gateway.smtp import replies
from gateway.smtp.replies import BAD_MAILBOX_NAME, Reply
from gateway.smtp.replies import MAILDIR_DELIVERED as DELIVERED
from gateway.spool import CHUNK, Body

HELO = "mail.example.gov.vn"
SENDER = "an@example.gov.vn"
MESSAGE = (
    b"From: An <an@example.gov.vn>\r\n"
    b"Subject: dots\r\n"
    b"Message-ID: <dots@example.gov.vn>\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"middle . dot\r\n"
    b"\r\n"
    b".\r\n"
    b"end\r\n"
)


# -- parse_reply / dot_stuff ---------------------------------------------------------------


def test_parse_reply_single_line_with_enhanced_status() -> None:
    assert parse_reply([b"550 5.1.1 <x@y.vn>: no such user"]) == Reply(
        550, "5.1.1", "<x@y.vn>: no such user"
    )


def test_parse_reply_without_enhanced_status_gets_class_default() -> None:
    assert parse_reply([b"250 OK"]) == Reply(250, "2.0.0", "OK")
    assert parse_reply([b"451 try later"]) == Reply(451, "4.0.0", "try later")
    assert parse_reply([b"554 no"]) == Reply(554, "5.0.0", "no")
    assert parse_reply([b"354 go ahead"]).code == 354


def test_parse_reply_status_of_the_wrong_class_is_ignored() -> None:
    reply = parse_reply([b"550 2.0.0 confused"])
    assert (reply.code, reply.status) == (550, "5.0.0")
    assert reply.text == "2.0.0 confused"


def test_parse_reply_multi_line_without_enhanced_status() -> None:
    reply = parse_reply([b"250-first", b"250-second", b"250 third"])
    assert reply == Reply(250, "2.0.0", "first second third")


def test_parse_reply_multi_line_with_enhanced_status() -> None:
    reply = parse_reply([b"452-4.2.2 mailbox", b"452 4.2.2 full"])
    assert (reply.code, reply.status) == (452, "4.2.2")
    assert reply.text.startswith("mailbox")
    assert reply.text.endswith("full")


def test_parse_reply_multi_line_does_not_repeat_the_status_in_the_text() -> None:
    reply = parse_reply([b"550-5.7.1 first", b"550 5.7.1 second"])
    assert reply == Reply(550, "5.7.1", "first second")


@pytest.mark.parametrize("line", [b"550 5.1.1234 odd", b"550 55.1.1 odd"])
def test_parse_reply_rejects_malformed_enhanced_status(line: bytes) -> None:
    assert parse_reply([line]).status == "5.0.0"


def test_parse_reply_non_utf8_text_is_replaced() -> None:
    reply = parse_reply([b"550 5.1.1 h\xf4p th\xef"])
    assert reply.status == "5.1.1"
    assert "\ufffd" in reply.text


@pytest.mark.parametrize(
    ("chunk", "stuffed"),
    [
        (b".x\r\n", b"..x\r\n"),
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n"),
        (b".\r\n", b"..\r\n"),
        (b"a\r\n.\r\n.\r\n", b"a\r\n..\r\n..\r\n"),
        (b"a.b\r\n", b"a.b\r\n"),
        (b"a\n.b\r\n", b"a\n.b\r\n"),  # only CRLF starts a line
        (b"", b""),
    ],
)
def test_dot_stuff(chunk: bytes, stuffed: bytes) -> None:
    assert dot_stuff(chunk) == stuffed


def unstuff(data: bytes) -> bytes:
    """What a receiving server does with DATA lines (RFC 5321 4.5.2)."""
    return b"".join(
        line[1:] if line.startswith(b".") else line for line in data.splitlines(keepends=True)
    )


def test_dot_stuff_round_trip_per_chunk() -> None:
    lines = MESSAGE.splitlines(keepends=True)
    chunks = [b"".join(lines[i : i + 3]) for i in range(0, len(lines), 3)]
    wire = b"".join(dot_stuff(c) for c in chunks)
    assert b"\r\n.\r\n" not in wire
    assert unstuff(wire) == MESSAGE


# -- a scripted SMTP/LMTP server -----------------------------------------------------------


@dataclass
class Transaction:
    mail: str
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    data: bytes | None = None  # as it came over the wire, still dot-stuffed, without the dot


def address_of(command: bytes) -> str:
    return command.split(b"<", 1)[1].split(b">", 1)[0].decode()


class FakeServer:
    """SMTP or LMTP on 127.0.0.1:0 whose answers the test scripts through attributes.

    With ``pipelining`` on it holds back its MAIL and RCPT replies until DATA arrives, so a
    client that waits for each reply instead of pipelining stalls and times out.
    """

    def __init__(self, *, lmtp: bool = False, pipelining: bool = True) -> None:
        self.lmtp = lmtp
        self.pipelining = pipelining
        self.rcpt_reply: Callable[[str], bytes] = lambda address: b"250 2.1.5 OK"
        self.final_reply: Callable[[str], bytes] = lambda address: b"250 2.0.0 queued"
        self.data_without_recipients = False  # answer 354 even when every RCPT was refused
        self.close_after_dot = False
        self.close_on_reused_mail = False  # close silently on MAIL after a transaction
        self.after_transaction: Callable[[asyncio.StreamWriter], Awaitable[None]] | None = None
        self.extra_extensions: list[bytes] = []  # offered after the usual ones in EHLO
        self.extra_reply: bytes | None = None  # a buggy hop: one more reply after the last
        self.starttls_reply: bytes | None = None  # answer to STARTTLS (no TLS follows)
        self.hold_final: asyncio.Event | None = None  # final replies wait for this
        self.dot_seen = asyncio.Event()  # a body's final dot arrived
        self.connections = 0
        self.transactions: list[Transaction] = []
        self.commands: list[bytes] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, unix_path: Path | None = None) -> FakeServer:
        if unix_path is not None:
            self._server = await asyncio.start_unix_server(self._session, unix_path)
            self.unix_path: str | None = str(unix_path)
            return self
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.unix_path = None
        return self

    def hop(self) -> Hop:
        return Hop("127.0.0.1", self.port, lmtp=self.lmtp, socket_path=self.unix_path)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        held: list[bytes] = []
        done = 0
        transaction: Transaction | None = None

        async def flush() -> None:
            writer.write(b"".join(line + b"\r\n" for line in held))
            held.clear()
            await writer.drain()

        try:
            held.append(b"220 fake.test ESMTP")
            await flush()
            while line := await reader.readline():
                command = line.rstrip(b"\r\n")
                self.commands.append(command)
                verb = command[:4].upper()
                if verb in (b"EHLO", b"LHLO", b"HELO"):
                    extensions = [b"fake.test", b"8BITMIME", b"SIZE 1000000"]
                    if self.pipelining:
                        extensions.append(b"PIPELINING")
                    extensions.append(b"ENHANCEDSTATUSCODES")
                    extensions += self.extra_extensions
                    held.extend(
                        b"250%s%s" % (b" " if i == len(extensions) - 1 else b"-", ext)
                        for i, ext in enumerate(extensions)
                    )
                elif verb == b"MAIL":
                    if self.close_on_reused_mail and done:
                        writer.close()
                        return
                    transaction = Transaction(address_of(command))
                    held.append(b"250 2.1.0 OK")
                elif verb == b"RCPT":
                    assert transaction is not None
                    address = address_of(command)
                    reply = self.rcpt_reply(address)
                    ok = reply.startswith(b"2")
                    (transaction.accepted if ok else transaction.refused).append(address)
                    held.append(reply)
                elif verb == b"DATA":
                    assert transaction is not None
                    if not transaction.accepted and not self.data_without_recipients:
                        held.append(b"554 5.5.1 No valid recipients")
                        await flush()
                        continue
                    held.append(b"354 End data with <CR><LF>.<CR><LF>")
                    await flush()
                    data = bytearray()
                    while (chunk := await reader.readline()) != b".\r\n":
                        if not chunk:
                            return
                        data += chunk
                    transaction.data = bytes(data)
                    self.transactions.append(transaction)
                    self.dot_seen.set()
                    if self.hold_final is not None:
                        await self.hold_final.wait()
                    if self.close_after_dot:
                        writer.close()
                        return
                    if not transaction.accepted:
                        held.append(b"554 5.5.1 No valid recipients")
                    elif self.lmtp:
                        held.extend(self.final_reply(a) for a in transaction.accepted)
                    else:
                        held.append(self.final_reply(transaction.accepted[0]))
                    if self.extra_reply is not None:
                        held.append(self.extra_reply)
                    await flush()
                    done += 1
                    if self.after_transaction is not None:
                        await self.after_transaction(writer)
                        return
                    continue
                elif command.upper() == b"STARTTLS" and self.starttls_reply is not None:
                    held.append(self.starttls_reply)
                elif verb == b"RSET":
                    held.append(b"250 2.0.0 OK")
                elif verb == b"QUIT":
                    held.append(b"221 2.0.0 Bye")
                    await flush()
                    writer.close()
                    return
                else:
                    held.append(b"502 5.5.2 Unknown command")
                if not (self.pipelining and verb in (b"MAIL", b"RCPT")):
                    await flush()
        except (ConnectionError, OSError):
            return


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    fake = await FakeServer().start()
    yield fake
    await fake.close()


@pytest.fixture
async def lmtp_server() -> AsyncIterator[FakeServer]:
    fake = await FakeServer(lmtp=True).start()
    yield fake
    await fake.close()


def pool_for(fake: FakeServer, timeout: float = 2.0) -> ConnectionPool:
    return ConnectionPool(fake.hop(), HELO, timeout, 4)


# -- Connection / ConnectionPool -----------------------------------------------------------


async def test_pipelined_envelope(server: FakeServer) -> None:
    pool = pool_for(server, timeout=1.0)
    rcpts = ["binh@other.gov.vn", "chi@other.gov.vn"]
    results = await pool.send(SENDER, rcpts, Body.from_bytes(MESSAGE))
    await pool.close()

    assert {r: (x.code, x.status) for r, x in results.items()} == {
        "binh@other.gov.vn": (250, "2.0.0"),
        "chi@other.gov.vn": (250, "2.0.0"),
    }
    (transaction,) = server.transactions
    assert transaction.mail == SENDER
    assert transaction.accepted == rcpts
    verbs = [c.split(b" ")[0].split(b":")[0] for c in server.commands]
    assert verbs == [b"EHLO", b"MAIL", b"RCPT", b"RCPT", b"DATA", b"QUIT"]
    mail = next(c for c in server.commands if c.startswith(b"MAIL"))
    assert b"BODY=8BITMIME" in mail and b"SIZE=%d" % len(MESSAGE) in mail


async def test_without_pipelining_commands_go_one_by_one() -> None:
    fake = await FakeServer(pipelining=False).start()
    try:
        fake.rcpt_reply = lambda a: b"550 5.1.1 unknown" if a.startswith("x") else b"250 OK"
        pool = pool_for(fake)
        results = await pool.send(SENDER, ["x@o.vn", "y@o.vn"], Body.from_bytes(MESSAGE))
        await pool.close()
    finally:
        await fake.close()
    assert (results["x@o.vn"].code, results["x@o.vn"].status) == (550, "5.1.1")
    assert results["y@o.vn"].code == 250
    assert fake.transactions[0].accepted == ["y@o.vn"]


async def test_per_recipient_rcpt_refusals(server: FakeServer) -> None:
    refusals = {
        "gone@other.gov.vn": b"550 5.1.1 <gone@other.gov.vn>: no such user",
        "full@other.gov.vn": b"452 4.2.2 mailbox full",
    }
    server.rcpt_reply = lambda a: refusals.get(a, b"250 2.1.5 OK")
    pool = pool_for(server)
    rcpts = ["ok@other.gov.vn", "gone@other.gov.vn", "full@other.gov.vn"]
    results = await pool.send(SENDER, rcpts, Body.from_bytes(MESSAGE))
    await pool.close()

    assert results["ok@other.gov.vn"] == Reply(250, "2.0.0", "queued")
    assert results["gone@other.gov.vn"] == Reply(550, "5.1.1", "<gone@other.gov.vn>: no such user")
    assert results["full@other.gov.vn"] == Reply(452, "4.2.2", "mailbox full")
    (transaction,) = server.transactions
    assert transaction.accepted == ["ok@other.gov.vn"]


async def test_every_rcpt_refused_sends_no_body(server: FakeServer) -> None:
    server.rcpt_reply = lambda a: b"550 5.1.1 no"
    pool = pool_for(server)
    results = await pool.send(SENDER, ["a@o.vn", "b@o.vn"], Body.from_bytes(MESSAGE))
    assert {(r.code, r.status) for r in results.values()} == {(550, "5.1.1")}
    assert server.transactions == []
    # the connection is still in a clean state and is reused
    server.rcpt_reply = lambda a: b"250 OK"
    again = await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    await pool.close()
    assert again["a@o.vn"].code == 250
    assert server.connections == 1


async def test_354_after_every_rcpt_refused_keeps_the_refusals(server: FakeServer) -> None:
    server.rcpt_reply = lambda a: b"550 5.1.1 no such user"
    server.data_without_recipients = True
    pool = pool_for(server, timeout=0.5)
    try:
        results = await pool.send(SENDER, ["a@o.vn", "b@o.vn"], Body.from_bytes(MESSAGE))
    finally:
        await pool.close()
    assert {(r.code, r.status) for r in results.values()} == {(550, "5.1.1")}


async def test_lmtp_gives_one_reply_per_recipient_after_data(lmtp_server: FakeServer) -> None:
    finals = {"binh@example.gov.vn": b"250 2.0.0 saved", "chi@example.gov.vn": b"452 4.2.2 full"}
    lmtp_server.final_reply = lambda a: finals[a]
    pool = pool_for(lmtp_server)
    results = await pool.send(SENDER, list(finals), Body.from_bytes(MESSAGE))
    await pool.close()

    assert results == {
        "binh@example.gov.vn": Reply(250, "2.0.0", "saved"),
        "chi@example.gov.vn": Reply(452, "4.2.2", "full"),
    }
    assert lmtp_server.commands[0].startswith(b"LHLO ")


async def test_lmtp_replies_follow_the_accepted_recipients(lmtp_server: FakeServer) -> None:
    lmtp_server.rcpt_reply = lambda a: b"550 5.1.1 no" if a.startswith("b") else b"250 OK"
    lmtp_server.final_reply = lambda a: b"250 2.0.0 ok" if a.startswith("a") else b"452 4.2.2 full"
    pool = pool_for(lmtp_server)
    rcpts = ["a@example.gov.vn", "b@example.gov.vn", "c@example.gov.vn"]
    results = await pool.send(SENDER, rcpts, Body.from_bytes(MESSAGE))
    await pool.close()
    assert [(results[r].code, results[r].status) for r in rcpts] == [
        (250, "2.0.0"),
        (550, "5.1.1"),
        (452, "4.2.2"),
    ]


async def test_body_arrives_dot_stuffed_and_unstuffs_to_the_original(server: FakeServer) -> None:
    pool = pool_for(server)
    await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    await pool.close()
    (transaction,) = server.transactions
    assert transaction.data is not None
    assert transaction.data.startswith(b"From: An")
    assert b"\r\n..leading dot\r\n...two dots\r\n..\r\n" in transaction.data
    assert unstuff(transaction.data) == MESSAGE


class SmallChunks(Body):
    """A spilled body read in tiny chunks, so chunk starts land on dot lines."""

    def line_chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        return super().line_chunks(5)


async def test_file_body_in_small_chunks_is_stuffed_at_every_chunk(
    server: FakeServer, tmp_path: Path
) -> None:
    path = tmp_path / "body.eml"
    data = MESSAGE * 30
    path.write_bytes(data)
    body = SmallChunks(len(data), b"", None, path)
    pool = pool_for(server)
    results = await pool.send(SENDER, ["a@o.vn"], body)
    await pool.close()
    assert results["a@o.vn"].code == 250
    (transaction,) = server.transactions
    assert transaction.data is not None
    assert unstuff(transaction.data) == data


async def test_body_without_final_line_end_gets_one(server: FakeServer) -> None:
    pool = pool_for(server)
    await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(b"Subject: x\r\n\r\n.no newline"))
    await pool.close()
    assert server.transactions[0].data == b"Subject: x\r\n\r\n..no newline\r\n"


@pytest.mark.parametrize("size", [10, 64 * 1024 - 40, 64 * 1024 + 7, 300 * 1024])
@pytest.mark.parametrize("final_crlf", [True, False])
async def test_bodies_around_the_join_size_end_with_one_dot_line(
    server: FakeServer, size: int, final_crlf: bool
) -> None:
    """Below 64 KiB the last chunk and the final dot go in one write, above it in two:
    the same bytes either way."""
    line = b".dot line that needs stuffing\r\n"
    data = b"Subject: big\r\n\r\n" + line * (size // len(line))
    if not final_crlf:
        data += b".tail"
    pool = pool_for(server)
    await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(data))
    await pool.close()
    (transaction,) = server.transactions
    assert transaction.data is not None
    assert unstuff(transaction.data) == (data if final_crlf else data + b"\r\n")


async def test_a_small_body_and_its_final_dot_are_one_write(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    original = Connection._send

    async def counting(self: Connection, data: bytes) -> None:
        writes.append(data)
        await original(self, data)

    monkeypatch.setattr(Connection, "_send", counting)
    pool = pool_for(server)
    await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    await pool.close()
    assert writes[-1].endswith(b"\r\n.\r\n") and unstuff(writes[-1][:-3]) == MESSAGE


async def test_pool_reuses_one_connection(server: FakeServer) -> None:
    pool = pool_for(server)
    first = await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    second = await pool.send(SENDER, ["b@o.vn"], Body.from_bytes(MESSAGE))
    await pool.close()
    assert first["a@o.vn"].code == second["b@o.vn"].code == 250
    assert server.connections == 1
    assert len(server.transactions) == 2
    assert sum(c.startswith(b"EHLO") for c in server.commands) == 1


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait for a condition (polling the loop), never for a fixed time."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def count_transactions(monkeypatch: pytest.MonkeyPatch) -> list[Connection]:
    """Each Connection.send call, by connection: shows which connection a pool tried."""
    tried: list[Connection] = []
    real = Connection.send

    async def send(self: Connection, *args: Any) -> HopReplies:
        tried.append(self)
        return await real(self, *args)

    monkeypatch.setattr(Connection, "send", send)
    return tried


async def test_pool_replaces_a_connection_the_server_closed(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool sees the FIN on the idle connection and never tries it (no stale retry)."""

    async def hang_up(writer: asyncio.StreamWriter) -> None:
        writer.close()

    server.after_transaction = hang_up
    tried = count_transactions(monkeypatch)
    pool = pool_for(server)
    await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    (idle,) = pool._idle
    await until(idle._reader.at_eof)  # the FIN reached the pooled connection
    results = await pool.send(SENDER, ["b@o.vn"], Body.from_bytes(MESSAGE))
    await pool.close()
    assert results["b@o.vn"].code == 250
    assert server.connections == 2
    assert len(tried) == 2 and tried[0] is idle and tried[1] is not idle, "dead one never tried"
    assert [t.accepted for t in server.transactions] == [["a@o.vn"], ["b@o.vn"]]


async def test_pool_retries_once_when_a_reused_connection_dies_before_any_reply(
    server: FakeServer,
) -> None:
    """The server hangs up as the next MAIL arrives: nothing was accepted, so retry is safe."""
    server.close_on_reused_mail = True
    pool = pool_for(server)
    await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    results = await pool.send(SENDER, ["b@o.vn"], Body.from_bytes(MESSAGE))
    await pool.close()
    assert results["b@o.vn"].code == 250
    assert server.connections == 2
    assert [t.accepted for t in server.transactions] == [["a@o.vn"], ["b@o.vn"]]


async def test_pool_replaces_a_connection_closed_with_421(server: FakeServer) -> None:
    async def idle_timeout(writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.4.2 fake.test Error: timeout exceeded\r\n")
        await writer.drain()
        writer.close()

    server.after_transaction = idle_timeout
    pool = pool_for(server)
    await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    await asyncio.sleep(0.05)
    try:
        results = await pool.send(SENDER, ["b@o.vn"], Body.from_bytes(MESSAGE))
    finally:
        await pool.close()
    assert results["b@o.vn"].code == 250


async def test_close_after_final_dot_is_an_error_not_a_retry(server: FakeServer) -> None:
    server.close_after_dot = True
    pool = pool_for(server)
    with pytest.raises(NextHopError):
        await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    await pool.close()
    assert server.connections == 1
    assert len(server.transactions) == 1  # the body went out exactly once


async def test_close_after_final_dot_on_a_reused_connection_is_not_retried(
    server: FakeServer,
) -> None:
    pool = pool_for(server)
    await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    server.close_after_dot = True
    with pytest.raises(NextHopError):
        await pool.send(SENDER, ["b@o.vn"], Body.from_bytes(MESSAGE))
    await pool.close()
    assert server.connections == 1
    assert [t.accepted for t in server.transactions] == [["a@o.vn"], ["b@o.vn"]]


async def test_network_deliverer_turns_a_broken_conversation_into_451(server: FakeServer) -> None:
    server.close_after_dot = True
    deliverer = NetworkDeliverer(DeliveryTarget("smtp", "127.0.0.1", server.port), HELO, 2.0, 2)
    results = await deliverer.deliver(SENDER, ["a@o.vn", "b@o.vn"], Body.from_bytes(MESSAGE))
    await deliverer.close()
    assert set(results) == {"a@o.vn", "b@o.vn"}
    for reply in results.values():
        assert (reply.code, reply.status) == (
            replies.NEXT_HOP_UNAVAILABLE.code,
            replies.NEXT_HOP_UNAVAILABLE.status,
        )


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_connect_refused_is_451_4_4_1_for_every_recipient() -> None:
    port = unused_port()
    deliverer = NetworkDeliverer(DeliveryTarget("lmtp", "127.0.0.1", port), HELO, 2.0, 2)
    assert deliverer.hop == f"lmtp://127.0.0.1:{port}"
    rcpts = ["a@example.gov.vn", "b@example.gov.vn", "c@other.gov.vn"]
    results = await deliverer.deliver(SENDER, rcpts, Body.from_bytes(MESSAGE))
    await deliverer.close()
    assert list(results) == rcpts
    for reply in results.values():
        assert reply.code == replies.NEXT_HOP_UNAVAILABLE.code == 451
        assert reply.status == replies.NEXT_HOP_UNAVAILABLE.status == "4.4.1"
        assert f"127.0.0.1:{port}" in reply.text


async def test_network_deliverer_passes_per_recipient_replies(server: FakeServer) -> None:
    server.rcpt_reply = lambda a: b"550 5.1.1 no" if a == "x@o.vn" else b"250 OK"
    deliverer = NetworkDeliverer(DeliveryTarget("smtp", "127.0.0.1", server.port), HELO, 2.0, 2)
    results = await deliverer.deliver(SENDER, ["x@o.vn", "y@o.vn"], Body.from_bytes(MESSAGE))
    await deliverer.close()
    assert results["x@o.vn"].code == 550
    assert results["y@o.vn"].code == 250


# -- one reply per command (LMTP duplicates, unmatched replies) ------------------------------


async def test_lmtp_duplicate_recipient_reads_a_reply_per_rcpt_command(
    lmtp_server: FakeServer,
) -> None:
    """RFC 2033 4.2: one final reply per accepted RCPT command, so an address given twice
    gets two; leaving one in the buffer would answer the next message's MAIL."""
    pool = pool_for(lmtp_server)
    first = await pool.send(SENDER, ["a@example.gov.vn"] * 2, Body.from_bytes(MESSAGE))
    second = await pool.send(
        SENDER, ["b@example.gov.vn"], Body.from_bytes(b"Subject: 2\r\n\r\n2\r\n")
    )
    await pool.close()
    assert first == {"a@example.gov.vn": Reply(250, "2.0.0", "queued")}
    assert second == {"b@example.gov.vn": Reply(250, "2.0.0", "queued")}
    assert lmtp_server.connections == 1
    assert [t.accepted for t in lmtp_server.transactions] == [
        ["a@example.gov.vn", "a@example.gov.vn"],
        ["b@example.gov.vn"],
    ]
    assert lmtp_server.transactions[1].data == b"Subject: 2\r\n\r\n2\r\n"


async def test_lmtp_duplicate_keeps_the_best_of_its_replies(lmtp_server: FakeServer) -> None:
    """One copy stored and one refused: the address has the message (no retry, no bounce)."""
    finals = iter([b"452 4.2.2 full", b"250 2.0.0 saved", b"250 2.0.0 saved"])
    lmtp_server.final_reply = lambda a: next(finals)
    pool = pool_for(lmtp_server)
    rcpts = ["a@example.gov.vn", "a@example.gov.vn", "c@example.gov.vn"]
    results = await pool.send(SENDER, rcpts, Body.from_bytes(MESSAGE))
    await pool.close()
    assert results == {
        "a@example.gov.vn": Reply(250, "2.0.0", "saved"),
        "c@example.gov.vn": Reply(250, "2.0.0", "saved"),
    }


@pytest.mark.parametrize("lmtp", [True, False])
async def test_an_unasked_reply_poisons_the_connection(lmtp: bool) -> None:
    """A reply no command asked for: no 250 can be trusted and the connection is dropped."""
    fake = await FakeServer(lmtp=lmtp).start()
    try:
        fake.extra_reply = b"250 2.0.0 one too many"
        pool = pool_for(fake)
        deliverer_like = await NetworkDeliverer(
            DeliveryTarget("lmtp" if lmtp else "smtp", "127.0.0.1", fake.port), HELO, 2.0, 2
        ).deliver(SENDER, ["a@example.gov.vn"], Body.from_bytes(MESSAGE))
        assert deliverer_like["a@example.gov.vn"].code == 451
        with pytest.raises(NextHopError, match="no command asked for"):
            await pool.send(SENDER, ["a@example.gov.vn"], Body.from_bytes(MESSAGE))
        assert pool._idle == [], "a poisoned connection is never pooled"
        fake.extra_reply = None
        again = await pool.send(SENDER, ["b@example.gov.vn"], Body.from_bytes(MESSAGE))
        await pool.close()
    finally:
        await fake.close()
    assert again["b@example.gov.vn"].code == 250
    assert fake.connections == 3  # deliverer, poisoned pool connection, its replacement


async def test_a_250_to_data_is_out_of_step_not_a_delivery(server: FakeServer) -> None:
    server.rcpt_reply = lambda a: b"250 OK\r\n250 OK"  # one RCPT, two replies
    pool = pool_for(server)
    with pytest.raises(NextHopError, match="out of step"):
        await pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    await pool.close()
    assert server.transactions == []


# -- robustness: odd bytes, exceptions ---------------------------------------------------------


async def test_non_utf8_ehlo_extension_is_not_an_exception(server: FakeServer) -> None:
    server.extra_extensions = [b"X-H\xf4P-TH\xef", b"AUTH PLAIN \xff"]
    deliverer = NetworkDeliverer(DeliveryTarget("smtp", "127.0.0.1", server.port), HELO, 2.0, 2)
    results = await deliverer.deliver(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE))
    await deliverer.close()
    assert results["a@o.vn"].code == 250
    assert len(server.transactions) == 1


async def test_network_deliverer_turns_any_exception_into_451(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any) -> HopReplies:
        raise ValueError("a bug")

    deliverer = NetworkDeliverer(DeliveryTarget("smtp", "127.0.0.1", server.port), HELO, 2.0, 2)
    monkeypatch.setattr(deliverer._pool, "send", broken)
    results = await deliverer.deliver(SENDER, ["a@o.vn", "b@o.vn"], Body.from_bytes(MESSAGE))
    await deliverer.close()
    assert {(r.code, r.status) for r in results.values()} == {(451, "4.4.1")}
    assert set(results) == {"a@o.vn", "b@o.vn"}
    assert "ValueError: a bug" in results["a@o.vn"].text
    assert "Traceback" in caplog.text


# -- closing the pool under in-flight deliveries ----------------------------------------------


async def test_closed_pool_lets_in_flight_delivery_finish_then_quits(server: FakeServer) -> None:
    """A reload closes the old pool while a delivery is under way: it completes, and its
    connection is closed with QUIT instead of going back into the closed pool."""
    server.hold_final = asyncio.Event()
    pool = pool_for(server)
    sending = asyncio.create_task(pool.send(SENDER, ["a@o.vn"], Body.from_bytes(MESSAGE)))
    async with asyncio.timeout(3):
        await server.dot_seen.wait()
    await pool.close()
    server.hold_final.set()
    results = await sending
    assert results["a@o.vn"].code == 250
    assert pool.closed and pool._idle == []
    await until(lambda: server.commands[-1:] == [b"QUIT"])


async def test_closed_pool_still_sends_on_a_fresh_connection(server: FakeServer) -> None:
    pool = pool_for(server)
    await pool.close()
    for rcpt in ("a@o.vn", "b@o.vn"):
        results = await pool.send(SENDER, [rcpt], Body.from_bytes(MESSAGE))
        assert results[rcpt].code == 250
        assert pool._idle == []
    await until(lambda: server.commands.count(b"QUIT") == 2)
    assert server.connections == 2


# -- LMTP over a unix socket -----------------------------------------------------------------


async def test_lmtp_over_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "lmtp"
    fake = await FakeServer(lmtp=True).start(unix_path=path)
    try:
        deliverer = NetworkDeliverer(DeliveryTarget("lmtp", path=path), HELO, 2.0, 2)
        assert deliverer.hop == f"lmtp:unix:{path}"
        results = await deliverer.deliver(SENDER, ["a@example.gov.vn"], Body.from_bytes(MESSAGE))
        await deliverer.close()
    finally:
        await fake.close()
    assert results["a@example.gov.vn"].code == 250
    assert fake.commands[0] == b"LHLO " + HELO.encode()
    assert unstuff(fake.transactions[0].data or b"") == MESSAGE


async def test_missing_unix_socket_is_451(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    deliverer = NetworkDeliverer(DeliveryTarget("lmtp", path=path), HELO, 2.0, 2)
    results = await deliverer.deliver(SENDER, ["a@example.gov.vn"], Body.from_bytes(MESSAGE))
    await deliverer.close()
    reply = results["a@example.gov.vn"]
    assert (reply.code, reply.status) == (451, "4.4.1")
    assert f"lmtp:unix:{path}" in reply.text


# -- MaildirDeliverer ----------------------------------------------------------------------


def maildir_files(folder: Path) -> list[Path]:
    return sorted((folder / "new").iterdir())


async def test_maildir_layout_one_hard_linked_file_per_recipient(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    deliverer = MaildirDeliverer(root)
    rcpts = ["binh@example.gov.vn", "Chi@Example.GOV.vn", "dung@bo.gov.vn"]
    results = await deliverer.deliver(SENDER, rcpts, Body.from_bytes(MESSAGE))

    assert results == dict.fromkeys(rcpts, DELIVERED)
    assert DELIVERED.code == 250
    folders = [
        root / "example.gov.vn" / "binh",
        root / "example.gov.vn" / "chi",
        root / "bo.gov.vn" / "dung",
    ]
    inodes = set()
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["cur", "new", "tmp"]
        assert list((folder / "tmp").iterdir()) == []
        assert list((folder / "cur").iterdir()) == []
        (delivered,) = maildir_files(folder)
        stat = delivered.stat()
        inodes.add(stat.st_ino)
        assert stat.st_nlink == len(folders)
        content = delivered.read_bytes()
        assert content == b"Return-Path: <an@example.gov.vn>\r\n" + MESSAGE
        assert delivered.name.endswith(f",S={len(content)}")
    assert len(inodes) == 1


async def test_maildir_spilled_body_and_null_sender(tmp_path: Path) -> None:
    path = tmp_path / "spilled.eml"
    path.write_bytes(MESSAGE * 100)
    deliverer = MaildirDeliverer(tmp_path / "mail")
    results = await deliverer.deliver("", ["a@example.gov.vn"], Body.from_file(path, b""))
    assert results["a@example.gov.vn"] == DELIVERED
    (delivered,) = maildir_files(tmp_path / "mail" / "example.gov.vn" / "a")
    assert delivered.read_bytes() == b"Return-Path: <>\r\n" + MESSAGE * 100


async def test_maildir_two_messages_get_two_files(tmp_path: Path) -> None:
    deliverer = MaildirDeliverer(tmp_path / "mail")
    for _ in range(2):
        await deliverer.deliver(SENDER, ["a@example.gov.vn"], Body.from_bytes(MESSAGE))
    assert len(maildir_files(tmp_path / "mail" / "example.gov.vn" / "a")) == 2


@pytest.mark.parametrize(
    "recipient",
    [
        "../x@example.gov.vn",
        ".hidden@example.gov.vn",
        "..@example.gov.vn",
        "a/b@example.gov.vn",
        "x@../etc",
        "x@.example.gov.vn",
        "@example.gov.vn",
        "nodomain",
    ],
)
async def test_maildir_refuses_path_escaping_names(tmp_path: Path, recipient: str) -> None:
    root = tmp_path / "mail"
    deliverer = MaildirDeliverer(root)
    results = await deliverer.deliver(
        SENDER, [recipient, "ok@example.gov.vn"], Body.from_bytes(MESSAGE)
    )
    assert results[recipient] == BAD_MAILBOX_NAME
    assert (results[recipient].code, results[recipient].status) == (550, "5.1.3")
    assert results["ok@example.gov.vn"] == DELIVERED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mail"]
    assert sorted(p.name for p in root.iterdir()) == ["example.gov.vn"]
    assert sorted(p.name for p in (root / "example.gov.vn").iterdir()) == ["ok"]


async def test_maildir_only_bad_names_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    results = await MaildirDeliverer(root).deliver(
        SENDER, ["../x@example.gov.vn"], Body.from_bytes(MESSAGE)
    )
    assert results == {"../x@example.gov.vn": BAD_MAILBOX_NAME}
    assert not root.exists()


async def test_maildir_write_failure_is_temporary(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    root.write_bytes(b"a file where the folder should be")
    results = await MaildirDeliverer(root).deliver(
        SENDER, ["a@example.gov.vn"], Body.from_bytes(MESSAGE)
    )
    reply = results["a@example.gov.vn"]
    assert (reply.code, reply.status) == (451, "4.3.0")
    assert reply.is_temporary
    assert os.path.isfile(root)


async def test_plaintext_after_the_starttls_go_ahead_poisons_the_connection(
    server: FakeServer,
) -> None:
    """Bytes that follow STARTTLS's 220 in plain text (a man in the middle injecting
    replies, CVE-2011-0411) must not be read as answers inside the TLS session."""
    server.extra_extensions = [b"STARTTLS"]
    server.starttls_reply = b"220 2.0.0 Ready\r\n250 2.0.0 injected"
    with pytest.raises(NextHopError, match="before the TLS handshake"):
        await pool_for(server).send("a@b.test", ["x@c.test"], Body.from_bytes(b"x\r\n"))
    assert server.transactions == []
