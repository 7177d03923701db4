"""Opening the user's session on the real store: Dovecot, as its master user.

The proxy has already checked the user's own password against the directory, so it logs
in upstream as ``USER*MASTER`` with the master password (Dovecot master users,
``auth_master_user_separator = *``). Before that it sends IMAP ID with the client's
address (``x-originating-ip``/``-port``) and the proxy's session id: with the proxy in
Dovecot's ``login_trusted_networks`` Dovecot logs, limits and penalises the real client,
not the proxy. The store's words and the master user's name stay in the events; the
client sees only the store's CAPABILITY list.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.imap.syntax import quote

# The store's side of the pipe: StreamReader stops reading at twice its limit, so a small
# one would cap a 10 MB FETCH at a few chunks per event-loop turn.
PIPE_LIMIT = 1 << 20


class UpstreamError(Exception):
    """The store could not be reached or refused the session; the text is for events."""


@dataclass(frozen=True, slots=True)
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    login_reply: bytes  # the store's tagged OK to LOGIN, e.g. b"OK [CAPABILITY ...] Logged in"


async def _tagged(reader: asyncio.StreamReader, tag: bytes) -> bytes:
    """Skip untagged lines up to ``tag``'s reply; returns the reply after the tag."""
    while True:
        line = await reader.readline()
        if not line:
            raise UpstreamError("the store closed the connection")
        if line.startswith(tag + b" "):
            return line[len(tag) + 1 :].rstrip(b"\r\n")


def _login_arguments(user: str, master: str, password: str) -> bytes:
    """LOGIN's arguments; a password quoting cannot carry goes as a LITERAL+ literal."""
    login = f"{user}*{master}"
    if password.isascii() and password.isprintable():
        return f"{quote(login)} {quote(password)}".encode()
    data = password.encode()
    return quote(login).encode() + b" {" + str(len(data)).encode() + b"+}\r\n" + data


async def open_session(
    host: str,
    port: int,
    user: str,
    master: str,
    master_password: str,
    client: tuple[str, int],
    session_id: str,
    timeout: float,
) -> Upstream:
    """Connect, send ID, log in as ``user*master``; UpstreamError when that fails in time."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=PIPE_LIMIT)
    except (OSError, TimeoutError) as exc:
        raise UpstreamError(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from None
    try:
        async with asyncio.timeout(timeout):
            greeting = await reader.readline()
            if not greeting.startswith(b"* OK"):
                raise UpstreamError(f"unexpected greeting {greeting[:80]!r}")
            if b"LITERAL+" not in greeting and not master_password.isprintable():
                raise UpstreamError("the master password needs LITERAL+, which the store lacks")
            ident = " ".join(
                quote(v)
                for pair in (
                    ("x-originating-ip", client[0]),
                    ("x-originating-port", str(client[1])),
                    ("x-session-id", session_id),
                )
                for v in pair
            )
            writer.write(f"M1 ID ({ident})\r\n".encode())
            writer.write(b"M2 LOGIN " + _login_arguments(user, master, master_password) + b"\r\n")
            await writer.drain()
            await _tagged(reader, b"M1")
            reply = await _tagged(reader, b"M2")
    except TimeoutError:
        writer.close()
        raise UpstreamError(f"the store at {host}:{port} did not answer in {timeout:g}s") from None
    except (OSError, UpstreamError) as exc:
        writer.close()
        raise UpstreamError(str(exc)) from None
    if not reply.startswith(b"OK"):
        writer.close()
        raise UpstreamError(f"the store refused the master login: {reply[:200]!r}")
    return Upstream(reader, writer, reply)
