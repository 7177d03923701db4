"""After login: the client's and the store's connections joined at the transport level.

Each side's transport gets a small protocol that writes what it receives straight into
the other transport, and back-pressure is the transports' own: when the receiving side's
write buffer passes its high-water mark, asyncio calls ``pause_writing`` and the sending
side stops reading until ``resume_writing``. So a slow client holds at most a buffer's
worth of a mailbox in memory, and each chunk is copied once between the sockets
(StreamReader's buffer and slicing cost a 10 MB FETCH a third of its rate).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

BUFFER_HIGH = 1024 * 1024  # bytes a side may have queued before the other stops reading


def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


@dataclass
class Counts:
    from_client: int = 0
    to_client: int = 0
    ended_by: str = ""  # "client" or "store"
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _Side(asyncio.Protocol):
    def __init__(self, pipe: Pipe, name: str) -> None:
        self.pipe = pipe
        self.name = name  # "client" or "store"

    def data_received(self, data: bytes) -> None:
        self.pipe.forward(self.name, data)

    def eof_received(self) -> bool:
        self.pipe.finish(self.name)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.finish(self.name)

    def pause_writing(self) -> None:  # this side's buffer is full: the other stops reading
        self.pipe.other(self.name).pause_reading()

    def resume_writing(self) -> None:
        other = self.pipe.other(self.name)
        if not other.is_closing():
            other.resume_reading()


class Pipe:
    """Joins two transports both ways until either side closes (``counts.done``)."""

    def __init__(self, client: asyncio.Transport, store: asyncio.Transport) -> None:
        self.transports = {"client": client, "store": store}
        self.counts = Counts()

    def start(self, pending_from_client: bytes, pending_from_store: bytes) -> Counts:
        """Swap in the pipe's protocols; bytes the stream readers already held go first."""
        for name, transport in self.transports.items():
            transport.set_write_buffer_limits(high=BUFFER_HIGH)
            transport.set_protocol(_Side(self, name))
        if pending_from_client:
            self.forward("client", pending_from_client)
        if pending_from_store:
            self.forward("store", pending_from_store)
        return self.counts

    def other(self, name: str) -> asyncio.Transport:
        return self.transports["store" if name == "client" else "client"]

    def forward(self, name: str, data: bytes) -> None:
        if name == "client":
            self.counts.from_client += len(data)
        else:
            self.counts.to_client += len(data)
        target = self.other(name)
        if not target.is_closing():
            target.write(data)

    def finish(self, name: str) -> None:
        if not self.counts.done.done():
            self.counts.ended_by = name
            self.counts.done.set_result(None)
        self.close()

    def close(self) -> None:
        for transport in self.transports.values():
            if not transport.is_closing():
                transport.close()
