"""Spreading SMTP connections over ``smtp.processes`` by load, not by a hash.

With SO_REUSEPORT the kernel hashes each new connection to one process's socket: a few
long-lived connections (an MTA's connection cache, a mail client's session) land
unevenly (the benchmark's 16 split 10/6, 12/4 or 13/3 as often as 8/8), and one process
saturates a core while the other idles. Instead every process accepts from the same
listening socket, one connection at a time, and a process holding more connections than
another leaves the next one to it: it stops watching the socket for a moment and, if the
connection is still waiting after that (the other process is busy or gone), takes it
after all.

The counts live on a :class:`Board`: one 64-bit slot per process in a memfd the primary
creates and every helper maps. A slot of -1 is a process that is not there.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway")

# How long a busier process leaves a waiting connection to the others.
DEFER_SECONDS = 0.005
# After accept() fails for lack of descriptors or memory, before trying again.
ACCEPT_RETRY_SECONDS = 0.1
WARN_EVERY_SECONDS = 60.0
_SLOT = struct.Struct("q")
ABSENT = -1


class Board:
    """Open SMTP connections per process, shared: each process writes its own slot."""

    def __init__(self, fd: int, slots: int, mine: int) -> None:
        self.fd = fd
        self.slots = slots
        self.mine = mine
        self._map = mmap.mmap(fd, slots * _SLOT.size)

    @classmethod
    def create(cls, slots: int) -> Board:
        """A new board (the primary's, slot 0), every other slot absent; its descriptor
        is inherited by the helpers, which map it with :meth:`attach`."""
        fd = os.memfd_create("mailgate-smtp-board")  # helpers get it through pass_fds
        os.ftruncate(fd, slots * _SLOT.size)
        board = cls(fd, slots, 0)
        for slot in range(1, slots):
            board.set(slot, ABSENT)
        return board

    @classmethod
    def attach(cls, fd: int, slots: int, mine: int) -> Board:
        board = cls(fd, slots, mine)
        board.set(mine, 0)
        return board

    def set(self, slot: int, value: int) -> None:
        _SLOT.pack_into(self._map, slot * _SLOT.size, value)

    def get(self, slot: int) -> int:
        return int(_SLOT.unpack_from(self._map, slot * _SLOT.size)[0])

    def report(self, open_connections: int) -> None:
        """This process's count (``ConnectionLimiter.on_change``)."""
        self.set(self.mine, open_connections)

    def least_loaded_other(self) -> int | None:
        """The smallest count among the other processes present, or None."""
        counts = [self.get(s) for s in range(self.slots) if s != self.mine]
        present = [c for c in counts if c != ABSENT]
        return min(present) if present else None

    def close(self) -> None:
        self._map.close()


class BalancedAcceptor:
    """Accepts from a listening socket every process shares, deferring to a less loaded
    process (:class:`Board`); hands each connection to ``protocol_factory`` as
    ``create_server`` would."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        board: Board,
    ) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.protocol_factory = protocol_factory
        self.board = board
        self._loop = asyncio.get_running_loop()
        self._watching = False
        self._closed = False
        self._insist = False  # the next readiness is a connection no one else took
        self._later: asyncio.TimerHandle | None = None
        self._starting: set[asyncio.Task[Any]] = set()
        self._warned = float("-inf")

    def start(self) -> None:
        self._watch()

    def close(self) -> None:
        """Stop accepting (the socket stays open in the other processes)."""
        self._closed = True
        self._unwatch()
        if self._later is not None:
            self._later.cancel()
        self.sock.close()

    def _watch(self) -> None:
        if not self._watching and not self._closed:
            self._loop.add_reader(self.sock.fileno(), self._ready)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self.sock.fileno())
            self._watching = False

    def _pause(self, seconds: float, insist: bool) -> None:
        self._unwatch()
        self._later = self._loop.call_later(seconds, self._resume, insist)

    def _resume(self, insist: bool) -> None:
        self._later = None
        self._insist = insist
        self._watch()

    def _busier(self) -> bool:
        """Whether another process holds fewer connections than this one (counting the
        ones this process accepted and is still setting up)."""
        least = self.board.least_loaded_other()
        mine = self.board.get(self.board.mine) + len(self._starting)
        return least is not None and mine > least

    def _ready(self) -> None:
        if not self._insist and self._busier():
            self._pause(DEFER_SECONDS, insist=True)  # a less loaded process may take it
            return
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            self._insist = False  # another process took it
            return
        except OSError as exc:  # out of descriptors or memory: the others may cope
            now = self._loop.time()
            if now - self._warned > WARN_EVERY_SECONDS:
                self._warned = now
                log.warning("cannot accept an SMTP connection: %s", exc)
            self._pause(ACCEPT_RETRY_SECONDS, insist=False)
            return
        self._insist = False
        conn.setblocking(False)
        task = self._loop.create_task(self._serve(conn))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self.protocol_factory, conn)
        except Exception as exc:  # the client left at once, or the loop is closing
            log.info("an SMTP connection ended before its session began: %s", exc)
            conn.close()
