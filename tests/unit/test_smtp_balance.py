"""The connection board and the balanced acceptor (gateway/smtp/balance.py), and the
helper mark that carries them to an SMTP helper (gateway/processes.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from gateway.processes import HELPER_ENV, HelperMark, helper_mark
from gateway.smtp import balance
from gateway.smtp.balance import ABSENT, BalancedAcceptor, Board


def test_the_board_is_shared_through_its_descriptor() -> None:
    primary = Board.create(3)
    helper = Board.attach(primary.fd, 3, 2)  # another mapping, as a helper's
    assert primary.least_loaded_other() == 0  # slot 1 absent, slot 2 present
    primary.report(5)
    helper.report(2)
    assert helper.least_loaded_other() == 5
    assert primary.least_loaded_other() == 2
    primary.set(2, ABSENT)  # the helper exited
    assert primary.least_loaded_other() is None
    helper.close()
    primary.close()
    os.close(primary.fd)


def test_the_helper_mark_carries_the_board_and_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    mark = HelperMark(100, 7, 3, 8, 2, {"smtp.inbound_listen/0": 9, "smtp.inbound_listen/1": 10})
    monkeypatch.setenv(HELPER_ENV, mark.encode())
    assert helper_mark() == mark
    assert HELPER_ENV not in os.environ  # nothing this process starts inherits it
    monkeypatch.setenv(HELPER_ENV, "100,7,3")  # an older primary's mark: not a helper
    assert helper_mark() is None


class Greeter(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"220 hi\r\n")  # type: ignore[attr-defined]


def listening() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def greeted_after(port: int) -> float:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.readline(), 5) == b"220 hi\r\n"
    writer.close()
    return time.monotonic() - started


async def test_a_busier_process_leaves_a_connection_waiting_then_takes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defer = 0.4  # long enough to tell from a loaded machine's ordinary delay
    monkeypatch.setattr(balance, "DEFER_SECONDS", defer)
    board = Board.create(2)
    board.set(1, 0)  # another process, idle, that never accepts
    sock = listening()
    acceptor = BalancedAcceptor(sock.dup(), Greeter, board)
    acceptor.start()
    try:
        port = sock.getsockname()[1]
        assert await greeted_after(port) < defer / 2  # 0 against 0: not busier
        board.report(3)  # this process holds more than the other
        assert await greeted_after(port) >= defer  # left to the other, then taken
        board.set(1, ABSENT)  # the other is gone: nothing to leave it to
        assert await greeted_after(port) < defer / 2
    finally:
        acceptor.close()
        sock.close()
        board.close()
        os.close(board.fd)
