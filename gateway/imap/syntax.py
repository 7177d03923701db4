"""Reading pre-authentication IMAP commands (RFC 9051 / RFC 3501 section 9), and only those.

Before login the proxy speaks IMAP itself, so this is the one place that parses what an
unauthenticated stranger sends: lines are bounded (``StreamReader`` limit), literals
are bounded (``max_literal``), and anything that does not parse is ``Malformed``: the
session answers BAD and closes, instead of guessing. After login the proxy only copies
bytes and parses nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# A literal announced at the end of a line: {N} (synchronising) or {N+} (LITERAL+).
_LITERAL = re.compile(rb"\{(\d{1,10})(\+?)\}$")
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')
_TAG_FORBIDDEN = _ATOM_SPECIALS | {ord("+")}


class Malformed(Exception):
    """The client sent something that is not IMAP; the reason is safe to show it."""


class LineTooLong(Malformed):
    """A line (or a literal) past its cap: never buffered whole."""


@dataclass(frozen=True, slots=True)
class Literal:
    data: bytes


@dataclass(frozen=True, slots=True)
class Command:
    tag: str
    name: str  # upper case
    args: list[str]  # atoms, quoted strings and literals, decoded; "(" and ")" as tokens


async def read_line(reader: asyncio.StreamReader) -> bytes:
    """One line without its line end; EOF is ConnectionError, an endless line LineTooLong."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise LineTooLong("line too long") from None
    except asyncio.IncompleteReadError:
        raise ConnectionError("client closed the connection") from None
    return line.rstrip(b"\r\n")


async def read_command(
    reader: asyncio.StreamReader,
    continue_literal: Callable[[], Awaitable[None]],
    max_literal: int,
) -> Command:
    """The next command, with its literals read (``continue_literal`` sends the "+"
    a synchronising literal waits for)."""
    parts: list[bytes | Literal] = []
    line = await read_line(reader)
    while True:
        found = _LITERAL.search(line)
        if found is None:
            parts.append(line)
            break
        size = int(found.group(1))
        if size > max_literal:
            raise LineTooLong(f"literal of {size} bytes; at most {max_literal} before login")
        parts.append(line[: found.start()])
        if not found.group(2):
            await continue_literal()
        try:
            parts.append(Literal(await reader.readexactly(size)))
        except asyncio.IncompleteReadError:
            raise ConnectionError("client closed the connection in a literal") from None
        line = await read_line(reader)
    return parse(parts)


def parse(parts: list[bytes | Literal]) -> Command:
    tokens: list[str] = []
    for part in parts:
        if isinstance(part, Literal):
            tokens.append(_text(part.data))
        else:
            tokens.extend(_tokens(part))
    if len(tokens) < 2:
        raise Malformed("expected a tag and a command")
    tag, name = tokens[0], tokens[1]
    raw_tag = tag.encode("utf-8", "surrogateescape")
    if not raw_tag or any(c in _TAG_FORBIDDEN or c < 0x21 or c == 0x7F for c in raw_tag):
        raise Malformed("invalid tag")
    if not name.isascii() or not name.isalpha():
        raise Malformed("invalid command name")
    return Command(tag, name.upper(), tokens[2:])


def _text(data: bytes) -> str:
    if b"\x00" in data:
        raise Malformed("NUL in a string")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("string is not UTF-8") from None


def _tokens(segment: bytes) -> list[str]:
    if any(c < 0x20 and c != 0x09 for c in segment) or b"\x7f" in segment:
        raise Malformed("control character in the command")
    found: list[str] = []
    i, end = 0, len(segment)
    while i < end:
        c = segment[i]
        if c == 0x20:
            i += 1
        elif c == 0x22:  # quoted string: \" and \\ are the only escapes
            out = bytearray()
            i += 1
            while True:
                if i >= end:
                    raise Malformed("unterminated quoted string")
                c = segment[i]
                if c == 0x5C:
                    if i + 1 >= end or segment[i + 1] not in (0x22, 0x5C):
                        raise Malformed("bad escape in a quoted string")
                    out.append(segment[i + 1])
                    i += 2
                elif c == 0x22:
                    i += 1
                    break
                else:
                    out.append(c)
                    i += 1
            found.append(_text(bytes(out)))
        elif c in (0x28, 0x29):  # ( )
            found.append(chr(c))
            i += 1
        else:
            start = i
            while i < end and segment[i] not in (0x20, 0x28, 0x29, 0x22):
                i += 1
            found.append(_text(segment[start:i]))
    return found


def quote(text: str) -> str:
    """``text`` as an IMAP quoted string (callers keep CR, LF and NUL out)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
