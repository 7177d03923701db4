"""The load generators: how messages are pushed into a system under test.

- ``smtp_source``: Postfix's ``smtp-source -d`` for the plain workload, a C client fast
  enough that the server, not the client, is what is measured (the sink row shows its
  ceiling).
- ``latency_probe``: an asyncio client timing MAIL..end-of-DATA on otherwise idle
  connections, after the throughput pass (smtp-source reports no per-message latency).
- ``drive``: an asyncio client for messages smtp-source cannot send (it only generates its
  own filler text): many parallel connections, each sending prepared DATA payloads in
  sequence, timing every message; used for the docx workload. No PIPELINING: one command,
  one reply, as smtp-source does without ``-P``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from bench.common import HOST, RCPT, SENDER, BenchError, tool
from bench.messages import probe_message


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on uvloop when installed (it is in the venv), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def smtp_source(port: int, sessions: int, size: int, messages: int, timeout: float) -> float:
    """Run ``smtp-source -d`` against ``port``; return its wall time in seconds."""
    cmd = [
        tool("smtp-source"),
        "-d",
        "-s",
        str(sessions),
        "-l",
        str(size),
        "-m",
        str(messages),
        "-f",
        SENDER,
        "-t",
        RCPT,
        f"{HOST}:{port}",
    ]
    start = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"smtp-source did not finish within {timeout:.0f}s") from exc
    wall = time.monotonic() - start
    if res.returncode != 0:
        raise BenchError(f"smtp-source failed ({res.returncode}): {res.stderr.strip()[-1000:]}")
    return wall


async def _reply(reader: asyncio.StreamReader, expect: int) -> None:
    """Read one (possibly multi-line) SMTP reply and check its code."""
    while True:
        line = await reader.readline()
        if not line:
            raise BenchError("connection closed by server")
        if line[3:4] != b"-":
            break
    if not line[:3].isdigit() or int(line[:3]) != expect:
        raise BenchError(f"expected {expect}, got {line.strip()[:200]!r}")


async def _probe_client(port: int, count: int, size: int, out: list[float]) -> None:
    """One connection sending ``count`` messages in sequence, timing MAIL..end of DATA."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        await _reply(reader, 220)
        writer.write(b"EHLO latency-probe.local\r\n")
        await _reply(reader, 250)
        mail = f"MAIL FROM:<{SENDER}>\r\n".encode()
        rcpt = f"RCPT TO:<{RCPT}>\r\n".encode()
        for i in range(count):
            message = probe_message(size, i)
            start = time.perf_counter()
            writer.write(mail)
            await _reply(reader, 250)
            writer.write(rcpt)
            await _reply(reader, 250)
            writer.write(b"DATA\r\n")
            await _reply(reader, 354)
            writer.write(message)
            await _reply(reader, 250)
            out.append(time.perf_counter() - start)
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(BenchError, ConnectionError):
            await _reply(reader, 221)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _probe(port: int, clients: int, total: int, size: int, timeout: float) -> list[float]:
    samples: list[float] = []
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    tasks = [_probe_client(port, n, size, samples) for n in per_client if n]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    return samples


def latency_probe(port: int, clients: int, total: int, size: int, timeout: float) -> list[float]:
    """Latency samples in ms from ``clients`` concurrent connections sending ``total`` msgs."""
    samples = run_async(_probe(port, clients, total, size, timeout))
    return sorted(s * 1000 for s in samples)


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Read one (possibly multi-line) SMTP reply: (code, last line)."""
    while True:
        line = await reader.readline()
        if not line:
            raise BenchError("connection closed by server")
        if line[3:4] != b"-":
            break
    text = line.decode("utf-8", "replace").strip()
    if not line[:3].isdigit():
        raise BenchError(f"malformed reply {text[:200]!r}")
    return int(line[:3]), text


@dataclass
class DriveResult:
    """What ``drive`` saw: accepted messages' latencies and any refusals."""

    wall_s: float = 0.0
    accepted: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # sorted, accepted messages
    refused: int = 0
    refused_replies: dict[str, int] = field(default_factory=dict)


async def _drive_client(
    port: int, indexes: list[int], payload: Callable[[int], bytes], out: DriveResult,
    recipient: str = RCPT, login: tuple[str, str] | None = None,
) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        code, text = await _read_reply(reader)
        if code != 220:
            raise BenchError(f"greeting {text[:200]!r}")
        writer.write(b"EHLO load-client.local\r\n")
        code, text = await _read_reply(reader)
        if code != 250:
            raise BenchError(f"EHLO answered {text[:200]!r}")
        sender = SENDER
        if login is not None:  # submission: AUTH PLAIN once, then send as that mailbox
            token = base64.b64encode(f"\0{login[0]}\0{login[1]}".encode()).decode()
            writer.write(f"AUTH PLAIN {token}\r\n".encode())
            code, text = await _read_reply(reader)
            if code != 235:
                raise BenchError(f"AUTH answered {text[:200]!r}")
            sender = login[0]
        mail = f"MAIL FROM:<{sender}>\r\n".encode()
        rcpt = f"RCPT TO:<{recipient}>\r\n".encode()
        for index in indexes:
            data = payload(index)
            start = time.perf_counter()
            refused = None
            for command, expect in ((mail, 250), (rcpt, 250), (b"DATA\r\n", 354)):
                writer.write(command)
                code, text = await _read_reply(reader)
                if code != expect:
                    refused = text
                    break
            if refused is None:
                writer.write(data)
                await writer.drain()
                code, text = await _read_reply(reader)
                if code == 250:
                    out.latencies_ms.append((time.perf_counter() - start) * 1000)
                    out.accepted += 1
                    continue
                refused = text
            else:
                writer.write(b"RSET\r\n")
                await _read_reply(reader)
            out.refused += 1
            key = refused[:160]
            out.refused_replies[key] = out.refused_replies.get(key, 0) + 1
            if refused.startswith("421"):
                raise BenchError(f"server closed the session: {refused[:200]}")
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(BenchError, ConnectionError):
            await _read_reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _drive(
    port: int, connections: int, first: int, total: int, payload: Callable[[int], bytes],
    timeout: float, recipient: str = RCPT, login: tuple[str, str] | None = None,
) -> DriveResult:  # fmt: skip
    out = DriveResult()
    shares: list[list[int]] = [[] for _ in range(connections)]
    for n in range(total):
        shares[n % connections].append(first + n)
    start = time.monotonic()
    tasks = [
        _drive_client(port, share, payload, out, recipient, login) for share in shares if share
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    except TimeoutError as exc:
        raise BenchError(f"{total} messages not sent within {timeout:.0f}s") from exc
    out.wall_s = time.monotonic() - start
    out.latencies_ms.sort()
    return out


def drive(
    port: int, connections: int, total: int, payload: Callable[[int], bytes], timeout: float,
    first: int = 0, recipient: str = RCPT, login: tuple[str, str] | None = None,
) -> DriveResult:  # fmt: skip
    """Send ``total`` messages (``payload(i)``: dot-stuffed DATA) over parallel connections,
    each to ``recipient``; with ``login`` (address, password), AUTH first and send as it."""
    return run_async(_drive(port, connections, first, total, payload, timeout, recipient, login))
